"""Salesforce (Opportunities): the connector and its emulator.

``connector.py`` speaks the REST API through simple-salesforce with our own HTTP policy;
``emulator.py`` is an org on 127.0.0.1 (OAuth token endpoint, sObjects, describe, SOQL,
sObject Collections); ``soql.py`` parses the SOQL subset the emulator answers.
"""
