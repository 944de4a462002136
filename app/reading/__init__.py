"""Files into documents: formats, text, titles (`extract`) and external ids from paths (`ids`).

A leaf shared by `personaizer sync` (client side, which must import nothing of the server) and
the dashboard's upload (a door), so a file uploaded either way is read the same way. It imports
only the standard library and the format readers.
"""
