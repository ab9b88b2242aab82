"""The OData v4 source of the ingest role, in the shape of the Dataverse Web API (issue 13).

``source.ODataSource`` fits ``syncd.ingest.source.Source``; ``client`` speaks HTTP and OData
JSON, ``csdl`` reads ``$metadata``, ``edm`` maps Edm types onto syncd's column types, and
``service`` is a local stand-in for the Dataverse service, for tests and the demo only.
"""
