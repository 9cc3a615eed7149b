"""`swipr fit`: replay a finished trial, write its model bundle, link the bundle to the study."""
