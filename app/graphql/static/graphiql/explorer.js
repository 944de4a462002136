// Starts GraphiQL against this server's /graphql. The key goes in the Headers tab; it is not
// kept in the browser's storage unless the user turns that on in GraphiQL's settings.
(function () {
  var url = window.location.pathname;
  var fetcher = GraphiQL.createFetcher({ url: url });
  var defaultQuery =
    "# Put your API key in the Headers tab below,\n" +
    "# {\"X-Api-Key\": \"pa_live_...\"}, then run this (Ctrl-Enter).\n" +
    "{\n  viewer { email plan { id name } }\n" +
    "  personas(first: 5) { items { id name } total }\n}\n";
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      defaultHeaders: '{"X-Api-Key": ""}',
      defaultEditorToolsVisibility: "headers",
      shouldPersistHeaders: false,
    })
  );
})();
