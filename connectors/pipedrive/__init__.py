"""Pipedrive: deals <-> sales projects through API v2 (v1 for flow, users and webhooks).

``connector.py`` is the adapter (:class:`~connectors.pipedrive.connector.PipedriveConnector`),
``emulator.py`` a Pipedrive account on 127.0.0.1 for tests, the demo and rehearsals, ``seed.py``
the data that account starts with.
"""
