"""`mergesmith serve`: a local page to compose, see, run and compare merges.

app.py is the ASGI application (Starlette) and its guards; roots.py decides which folders the page
may read and write; jobs.py runs merges and evaluations as worker processes (worker.py) and streams
their progress; history.py keeps every run in a SQLite file. The page itself (static/) is plain
HTML, CSS and JavaScript shipped in the package: no build step, no CDN.
"""
