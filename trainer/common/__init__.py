"""Plumbing every stage uses: typed fields, deadlines, secret redaction, the precision decision, model resolution, errors."""
