"""Trello boards as pipelines (lists are stages, cards are projects): connector, emulator."""
