"""The runs folder, shared by processes that may die at any instant.

- `layout`: every path under runs/ and runs/<space>/, and what --fresh removes.
- `atomic`: writes that a crash cannot tear.
- `locks`: who holds a runs folder (a search, workers of one study, a promotion).
- `faults`: crash injection for the tests that prove the above.
"""
