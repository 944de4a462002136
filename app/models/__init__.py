"""SQLModel tables and the data models that cross the boundary.

Table models (`table=True`) stay inside services; the doors see only the `*Public` models here
(REST) or their own Strawberry types (GraphQL). Request models validate exactly what the contract
says and nothing more; unknown fields are ignored (API.md section 1).

One module per area; everything is re-exported here, so `from app.models import X` works.
"""

from app.models.accounts import (
    SCOPES as SCOPES,
)
from app.models.accounts import (
    TOKEN_SCOPES as TOKEN_SCOPES,
)
from app.models.accounts import (
    ApiKey as ApiKey,
)
from app.models.accounts import (
    ApiKeyCreated as ApiKeyCreated,
)
from app.models.accounts import (
    ApiKeyPublic as ApiKeyPublic,
)
from app.models.accounts import (
    KeyStatus as KeyStatus,
)
from app.models.accounts import (
    PlanRow as PlanRow,
)
from app.models.accounts import (
    Scope as Scope,
)
from app.models.accounts import (
    User as User,
)
from app.models.accounts import (
    UserPublic as UserPublic,
)
from app.models.base import (
    EXTERNAL_ID_RE as EXTERNAL_ID_RE,
)
from app.models.base import (
    METADATA_MAX_BYTES as METADATA_MAX_BYTES,
)
from app.models.base import (
    METADATA_MAX_DEPTH as METADATA_MAX_DEPTH,
)
from app.models.base import (
    TITLE_MAX as TITLE_MAX,
)
from app.models.base import (
    Content as Content,
)
from app.models.base import (
    ExternalId as ExternalId,
)
from app.models.base import (
    JsonObject as JsonObject,
)
from app.models.base import (
    Metadata as Metadata,
)
from app.models.base import (
    PublicModel as PublicModel,
)
from app.models.base import (
    RequestModel as RequestModel,
)
from app.models.base import (
    Timestamp as Timestamp,
)
from app.models.base import (
    Title as Title,
)
from app.models.base import (
    UTCDateTime as UTCDateTime,
)
from app.models.base import (
    check_external_id as check_external_id,
)
from app.models.base import (
    check_metadata as check_metadata,
)
from app.models.base import (
    format_time as format_time,
)
from app.models.base import (
    parse_api_time as parse_api_time,
)
from app.models.base import (
    time_field as time_field,
)
from app.models.base import (
    utcnow as utcnow,
)
from app.models.knowledge import (
    CHANGES_DEFAULT_LIMIT as CHANGES_DEFAULT_LIMIT,
)
from app.models.knowledge import (
    CHANGES_MAX_LIMIT as CHANGES_MAX_LIMIT,
)
from app.models.knowledge import (
    EMBEDDING_DIMS as EMBEDDING_DIMS,
)
from app.models.knowledge import (
    BatchUpsertResponse as BatchUpsertResponse,
)
from app.models.knowledge import (
    ChangesQuery as ChangesQuery,
)
from app.models.knowledge import (
    Chunk as Chunk,
)
from app.models.knowledge import (
    DocFilters as DocFilters,
)
from app.models.knowledge import (
    Embedding as Embedding,
)
from app.models.knowledge import (
    KnowledgeChange as KnowledgeChange,
)
from app.models.knowledge import (
    KnowledgeChanges as KnowledgeChanges,
)
from app.models.knowledge import (
    KnowledgeDoc as KnowledgeDoc,
)
from app.models.knowledge import (
    KnowledgeDocBatch as KnowledgeDocBatch,
)
from app.models.knowledge import (
    KnowledgeDocBody as KnowledgeDocBody,
)
from app.models.knowledge import (
    KnowledgeDocItem as KnowledgeDocItem,
)
from app.models.knowledge import (
    KnowledgeDocPublic as KnowledgeDocPublic,
)
from app.models.knowledge import (
    KnowledgeFeedState as KnowledgeFeedState,
)
from app.models.knowledge import (
    KnowledgeTombstone as KnowledgeTombstone,
)
from app.models.knowledge import (
    SingleUpsertResponse as SingleUpsertResponse,
)
from app.models.knowledge import (
    UpsertResult as UpsertResult,
)
from app.models.knowledge import (
    UpsertStatus as UpsertStatus,
)
from app.models.knowledge import (
    UpsertSummary as UpsertSummary,
)
from app.models.pages import (
    Page as Page,
)
from app.models.personas import (
    KNOWLEDGE_FILTER_PREFIXES_MAX as KNOWLEDGE_FILTER_PREFIXES_MAX,
)
from app.models.personas import (
    PERSONA_DESCRIPTION_MAX as PERSONA_DESCRIPTION_MAX,
)
from app.models.personas import (
    PERSONA_GREETING_MAX as PERSONA_GREETING_MAX,
)
from app.models.personas import (
    PERSONA_INSTRUCTIONS_MAX as PERSONA_INSTRUCTIONS_MAX,
)
from app.models.personas import (
    PERSONA_KNOWLEDGE_MAX as PERSONA_KNOWLEDGE_MAX,
)
from app.models.personas import (
    PERSONA_NAME_MAX as PERSONA_NAME_MAX,
)
from app.models.personas import (
    KnowledgeFilter as KnowledgeFilter,
)
from app.models.personas import (
    KnowledgeFilterPublic as KnowledgeFilterPublic,
)
from app.models.personas import (
    KnowledgeVia as KnowledgeVia,
)
from app.models.personas import (
    Persona as Persona,
)
from app.models.personas import (
    PersonaCreate as PersonaCreate,
)
from app.models.personas import (
    PersonaKnowledge as PersonaKnowledge,
)
from app.models.personas import (
    PersonaKnowledgeBody as PersonaKnowledgeBody,
)
from app.models.personas import (
    PersonaKnowledgeDoc as PersonaKnowledgeDoc,
)
from app.models.personas import (
    PersonaKnowledgeResult as PersonaKnowledgeResult,
)
from app.models.personas import (
    PersonaListItem as PersonaListItem,
)
from app.models.personas import (
    PersonaPublic as PersonaPublic,
)
from app.models.personas import (
    PersonaUpdate as PersonaUpdate,
)
from app.models.search import (
    SEARCH_EXTERNAL_IDS_MAX as SEARCH_EXTERNAL_IDS_MAX,
)
from app.models.search import (
    SEARCH_K_MAX as SEARCH_K_MAX,
)
from app.models.search import (
    SEARCH_METADATA_KEYS_MAX as SEARCH_METADATA_KEYS_MAX,
)
from app.models.search import (
    SEARCH_QUERY_MAX as SEARCH_QUERY_MAX,
)
from app.models.search import (
    SearchHit as SearchHit,
)
from app.models.search import (
    SearchMode as SearchMode,
)
from app.models.search import (
    SearchRequest as SearchRequest,
)
from app.models.search import (
    SearchResponse as SearchResponse,
)
from app.models.sessions import (
    DashboardSession as DashboardSession,
)
from app.models.subscription import (
    PlanLimitsPublic as PlanLimitsPublic,
)
from app.models.subscription import (
    PlanRef as PlanRef,
)
from app.models.subscription import (
    SubscriptionPublic as SubscriptionPublic,
)
from app.models.subscription import (
    UsageBreakdown as UsageBreakdown,
)
from app.models.subscription import (
    UsageCounter as UsageCounter,
)
from app.models.subscription import (
    UsagePublic as UsagePublic,
)
from app.models.subscription import (
    Used as Used,
)
from app.models.subscription import (
    UsedOfLimit as UsedOfLimit,
)
