"""Resource attributes of an event's process, and the schema URL of the conventions followed.

Per (service, host, pid): ``OTEL_RESOURCE_ATTRIBUTES`` and ``otlp.resource_attributes``
first, then what the event says, which wins (``service.name``, ``host.name``,
``process.pid``), ``service.instance.id`` (a UUID derived from those three,
stable across collectors and restarts), ``telemetry.sdk.name/language/version``
(this package) and ``deployment.environment.name`` (and the older
``deployment.environment``) from config.

GenAI conventions: by default v1.36.0 (``gen_ai.system``), as the conventions
ask of existing instrumentations; with
``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` the latest
experimental names, v1.37.0 (``gen_ai.provider.name``). The schema URL says which.
"""

from __future__ import annotations

import uuid
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector.otlp import wire
from collector.otlp.options import VERSION, TranslateOptions

__all__ = ["Resources", "resource_attributes"]

_INSTANCE_NAMESPACE = uuid.UUID("6f1c2f0e-5b7e-4d1a-9a53-3f0a1d7c2b10")
_T_RESOURCE_ATTRIBUTE = wire.tag(resource_pb2.Resource.DESCRIPTOR, "attributes")
_CACHE_LIMIT = 4096
ResourceKey = tuple[str, str, int]


def resource_attributes(
    service: str, host: str, pid: int, environment: str | None, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    attributes: dict[str, Any] = dict(extra or {})
    attributes.update(
        {
            "service.name": service,
            "host.name": host,
            "process.pid": pid,
            "service.instance.id": str(uuid.uuid5(_INSTANCE_NAMESPACE, f"{service}/{host}/{pid}")),
            "telemetry.sdk.name": "mlx-telemetry",
            "telemetry.sdk.language": "python",
            "telemetry.sdk.version": VERSION,
        }
    )
    if environment:
        attributes["deployment.environment.name"] = environment
        attributes["deployment.environment"] = environment
    return attributes


class Resources:
    """Resource encodings by (service, host, pid), cached."""

    def __init__(self, options: TranslateOptions, extra: dict[str, str] | None = None) -> None:
        self._environment = options.deployment_environment
        self._extra = dict(extra or {})
        self.schema_url = options.schema_url
        self._encoded: dict[ResourceKey, bytes] = {}

    def attributes(self, key: ResourceKey) -> dict[str, Any]:
        return resource_attributes(*key, self._environment, self._extra)

    def encoded(self, key: ResourceKey) -> bytes:
        """The ``Resource`` message bytes (its attributes)."""
        resource = self._encoded.get(key)
        if resource is None:
            if len(self._encoded) >= _CACHE_LIMIT:
                self._encoded.clear()
            resource = b"".join(
                wire.length_delimited(_T_RESOURCE_ATTRIBUTE, wire.attribute(name, value))
                for name, value in self.attributes(key).items()
            )
            self._encoded[key] = resource
        return resource

    def message(self, key: ResourceKey) -> Resource:
        return Resource(
            attributes=[
                KeyValue(key=name, value=AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value))
                for name, value in self.attributes(key).items()
            ]
        )
