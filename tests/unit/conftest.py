"""Unit tier: pure rules, templates and validation. No network, no servers, no sleeping."""
