"""Loyalty Points API: a standalone service for customers' loyalty point balances."""
