"""Asana: sections are stages, tasks are sales projects (or, by config, projects are).

``connector.py`` is the adapter (the official ``asana`` client over our HTTP layer, the events
endpoint for incremental pulls); ``emulator.py`` the Asana API emulator used by the tests and the
demo; ``seed.py`` its seed data.
"""
