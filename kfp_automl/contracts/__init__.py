"""Typed, versioned contracts between the steps and the Bento: each file is written and read here."""
