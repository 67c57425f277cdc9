"""The Mobyt side: the wire format (protocol.py), the HTTP POST (transport.py) and one
method per provider function (client.py). Nothing here knows Redis, Celery or the web."""
