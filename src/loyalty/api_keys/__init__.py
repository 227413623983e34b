"""Secret API keys (SPEC 8.1): `sk_…` tokens a store backend sends instead of a user's JWT."""
