"""The team app: one server process serving a SearchPanel per browser session (see docs/app.md).

`config` (settings), `shared` (the searcher all sessions use), `page` (the Solara page),
`sessions` (limits and culling), `frames` (websocket message checks), `guard` (Host, Origin,
token, routes), `server` (uvicorn in this process) and `client` (a headless session for tests
and benchmarks).
"""

__all__: list[str] = []
