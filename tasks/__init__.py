"""Celery task definitions for Popoto."""
