"""Where transports are registered, and the provider tables merged from what each declares.

Adding a transport is one module (an object satisfying `transport.Transport`) and one line at
the bottom of this file. The order of those lines is the order transports are asked whether
they serve a provider; litellm serves any provider, so it comes last. The tables are built when
a transport is registered, so routing a call costs a few dictionary lookups.
"""

from __future__ import annotations

from collections.abc import Iterator

from llmkit.errors import BadRequest
from llmkit.providers.echo import ECHO
from llmkit.providers.openai_wire import WIRE
from llmkit.providers.transport import Transport
from llmkit.providers.via_litellm import LITELLM


class Transports:
    """The registered transports, in the order they are asked, with the provider tables of all
    of them: a provider's key variable, the bare model names that mean it, and the local
    transport that serves it, if any."""

    def __init__(self) -> None:
        self._order: list[Transport] = []
        self._rebuild()

    def register(self, transport: Transport, *, before: str | None = None) -> None:
        """Add `transport`, last or before the one named `before`. Raises ValueError when its
        name is taken or it gives a provider another key variable than a registered one does."""
        if any(t.name == transport.name for t in self._order):
            raise ValueError(f"a transport named {transport.name!r} is already registered")
        order = list(self._order)
        names = [t.name for t in order]
        if before is not None and before not in names:
            raise ValueError(f"no transport named {before!r} to register {transport.name!r} before")
        order.insert(names.index(before) if before is not None else len(order), transport)
        previous, self._order = self._order, order
        try:
            self._rebuild()
        except ValueError:
            self._order = previous
            self._rebuild()
            raise

    def unregister(self, name: str) -> None:
        self._order = [t for t in self._order if t.name != name]
        self._rebuild()

    def _rebuild(self) -> None:
        by_name: dict[str, Transport] = {}
        local: dict[str, Transport] = {}
        key_envs: dict[str, str] = {}
        declared: dict[str, tuple[str, str | None]] = {}
        bare_names: dict[str, str] = {}
        bare_prefixes: list[tuple[str, str]] = []
        for transport in self._order:
            by_name[transport.name] = transport
            for provider in transport.providers:
                first = declared.setdefault(provider.name, (transport.name, provider.key_env))
                if first[1] != provider.key_env:
                    raise ValueError(
                        f"transport {transport.name!r} gives provider {provider.name!r} the key"
                        f" variable {provider.key_env}, transport {first[0]!r} {first[1]}"
                    )
                if provider.key_env:
                    key_envs[provider.name] = provider.key_env
                if transport.local:
                    local.setdefault(provider.name, transport)
                for bare in provider.bare_names:
                    bare_names.setdefault(bare, provider.name)
                bare_prefixes += [(start, provider.name) for start in provider.bare_prefixes]
        self.by_name = by_name
        self.local = local
        self.key_envs = key_envs
        self.bare_names = bare_names
        self.bare_prefixes = tuple(bare_prefixes)
        # One startswith() over all prefixes tells most names apart before the loop over them.
        self.any_bare_prefix = tuple(start for start, _ in bare_prefixes)
        self._remote = tuple(t for t in self._order if not t.local)

    def __iter__(self) -> Iterator[Transport]:
        return iter(self._order)

    def route(self, provider: str, api_base: str | None, via: str | None) -> Transport:
        """The transport for a call to a (non-local) `provider`: the one `via` names, else the
        first that serves it."""
        if via is not None:
            transport = self.by_name.get(via)
            if transport is None:
                known = ", ".join(self.by_name)
                raise BadRequest(f"Unknown transport via={via!r}; known transports: {known}")
            if not transport.serves(provider, api_base, forced=True):
                raise BadRequest(f"Transport {via!r} cannot serve provider {provider}")
            return transport
        for transport in self._remote:
            if transport.serves(provider, api_base):
                return transport
        raise BadRequest(f"No transport serves provider {provider}")

    async def aclose(self) -> None:
        """Close every transport's pooled connections of the running event loop."""
        for transport in self._order:
            await transport.aclose()


TRANSPORTS = Transports()
# The transports, in the order they are asked. A new one goes before litellm.
TRANSPORTS.register(ECHO)
TRANSPORTS.register(WIRE)
TRANSPORTS.register(LITELLM)
