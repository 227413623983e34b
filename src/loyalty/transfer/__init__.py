"""`loyalty import` and `loyalty export`: moving adjustments in and out in bulk."""
