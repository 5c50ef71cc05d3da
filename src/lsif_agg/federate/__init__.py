"""The federation wing: the aiohttp endpoint that scrapes every target and serves one exposition."""
