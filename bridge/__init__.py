"""salesbridge core: the canonical sales project, config, store, mapping, sync, rules and digests.

Glossary (used the same way everywhere in the code):

project
    A canonical sales project (:class:`bridge.model.SalesProject`): the hub every tool maps to.
record
    One item in a tool: a Jira issue, a Trello card, an Asana task, a CRM opportunity or deal.
ref
    A record's id in its tool (``SALES-12``, a Trello card id, a Salesforce 18-char id).
version
    What a tool says about a record's revision (an updated timestamp, an etag, a revision
    counter). Used for optimistic concurrency on writes and to drop duplicate reads.
link
    The association (project, connector, ref) plus the last seen version and the record's URL.
base
    Per (project, connector, field): the value both sides agreed on at the last sync. The
    three-way merge compares the hub and the tool against it.
cursor
    Where an incremental pull resumes, per connector and partition (board, project, pipeline).
    Opaque to the engine; only the connector interprets it.
connector
    A small stateless adapter between one tool's API and the canonical model (``connectors/``).
mapping
    An ops-edited TOML file saying which remote field maps to which canonical field, and how.
"""

__version__ = "0.1.0"
