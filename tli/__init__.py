"""Targeted Lexical Injection toolkit."""
