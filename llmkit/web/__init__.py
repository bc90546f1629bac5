"""The web UI: server-rendered pages at `/` for people who don't live in the IDE.

Pages are Jinja2 templates over the same core the HTTP API reads (the Index, the authoring
functions, the key store), so a prompt reads and writes the same way from either. Every page
needs an admin: a browser signs in at `/sign-in` through the API's own sign-in route
(`POST /v1/ui/auth/login`), and every form that changes something carries the session's CSRF
token, checked by the API's own dependency. The pages work with JavaScript off; the one small
script only improves sign-in errors and asks before a key is revoked. Nothing is fetched from
another host: the stylesheet and script are served from this package under `/static/`.
"""
