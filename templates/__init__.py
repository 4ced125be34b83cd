"""Jinja2 templates (one per artifact) and JSON Schemas, shipped as package data."""
