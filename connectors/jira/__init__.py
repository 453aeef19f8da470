"""Jira Cloud and Jira Data Center: the connector and its emulator."""
