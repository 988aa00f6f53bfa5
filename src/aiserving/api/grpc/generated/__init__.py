"""Modules generated from ../protos by scripts/gen_protos.py (not kept in git)."""
