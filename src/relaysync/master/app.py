"""The master's REST API application: the route table, token checks and error mapping.

Error handling:
    NotFound -> 404, ConfigError -> 422, AuthError -> 403, other StoreError -> 503, always as
    {"detail": "..."}; a refused join as {"detail", "code"} with the code's status (403 token,
    400 name or CSR, 409 name taken: auth/join_refusals.py); a missing or unknown token -> 401. Before any of that a body
    over API_MAX_BODY_BYTES (API_JOIN_MAX_BODY_BYTES for /api/join) -> 413, and a JSON body with
    NaN, Infinity or an integer past 64 bits -> 422 (api/_limits.py).

Resource handling:
    The app owns nothing: the store, CA and event bus are the caller's, and outlive it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

import relaysync.master.api.sites as sites_api
from relaysync import __version__
from relaysync.auth.ca import CertificateAuthority
from relaysync.constants import API_JOIN_MAX_BODY_BYTES, API_MAX_BODY_BYTES
from relaysync.errors import AuthError, ConfigError, NotFound, RouteError, StoreError
from relaysync.master.api import (
    alert_channels,
    alerts,
    events,
    fleet_ca,
    health,
    jobs,
    join,
    mappings,
    metrics,
    modes,
    nm_jobs,
    policies,
    probes,
    retention,
    routing,
    servers,
    stats,
    thresholds,
    tokens,
    topology,
    whoami,
)
from relaysync.master.api._context import ApiContext, call_on_event_loop, require_token
from relaysync.master.api._limits import RequestLimits
from relaysync.master.events import EventBus
from relaysync.master.router import Router
from relaysync.master.source_failures import SourceFailures
from relaysync.master.store import Store
from relaysync.ui import mount_console

logger = logging.getLogger(__name__)


class Route(NamedTuple):
    path: str
    endpoint: Callable[..., Any]
    methods: tuple[str, ...]
    public: bool = False  # no token needed
    status_code: int = 200


# fmt: off
ROUTES: tuple[Route, ...] = (
    Route("/api/health", health.get_health, ("GET",), public=True),
    Route("/api/ca", fleet_ca.get_ca, ("GET",), public=True),                              # the fleet CA, fetched before a join
    Route("/api/join", join.join, ("POST",), public=True),                          # {token, name, csr_pem}
    Route("/api/servers", servers.list_servers, ("GET",)),
    Route("/api/servers/{name}", servers.get_server, ("GET",)),                     # name or node id
    Route("/api/servers/{name}", servers.delete_server, ("DELETE",), status_code=204),  # unused by mappings
    Route("/api/servers/{name}/revoke", servers.revoke_server, ("POST",)),          # even while mappings use it
    Route("/api/servers/{name}", servers.patch_server, ("PATCH",)),                 # TopologyPatch: region, group, capacity
    Route("/api/topology", topology.get_topology, ("GET",)),                        # regions > groups > servers
    Route("/api/mappings", mappings.list_mappings, ("GET",)),
    Route("/api/mappings", mappings.create_mapping, ("POST",), status_code=201),    # MappingIn
    Route("/api/mappings/{id_or_name}", mappings.get_mapping, ("GET",)),
    Route("/api/mappings/{id_or_name}", mappings.update_mapping, ("PATCH",)),       # MappingPatch
    Route("/api/mappings/{id_or_name}", mappings.delete_mapping, ("DELETE",), status_code=204),
    Route("/api/mappings/{id_or_name}/status", mappings.get_mapping_status, ("GET",)),
    Route("/api/mappings/{id_or_name}/mode", modes.get_mode, ("GET",)),
    Route("/api/mappings/{id_or_name}/mode", modes.put_mode, ("PUT",)),              # ModeIn
    Route("/api/mappings/{id_or_name}/send", modes.send_now, ("POST",)),             # manual transmission
    Route("/api/mappings/{id_or_name}/confirm-deletes", modes.confirm_deletes, ("POST",)),  # mass-delete guard
    Route("/api/mappings/{id_or_name}/versions", modes.put_versions, ("PUT",)),      # VersionsIn: backups
    Route("/api/mappings/{id_or_name}/transfer", modes.get_transfer, ("GET",)),
    Route("/api/mappings/{id_or_name}/transfer", modes.put_transfer, ("PUT",)),      # TransferIn: auto|delta|whole|null
    Route("/api/mappings/{id_or_name}/target-policy", modes.get_target_policy, ("GET",)),
    Route("/api/mappings/{id_or_name}/target-policy", modes.put_target_policy, ("PUT",)),  # TargetPolicyIn: symlinks, mode_mask
    Route("/api/mappings/{id_or_name}/routing", routing.get_routing, ("GET",)),
    Route("/api/mappings/{id_or_name}/routing", routing.put_routing, ("PUT",)),      # RoutingIn: fields left out keep their value
    Route("/api/mappings/{id_or_name}/routes", routing.get_routes, ("GET",)),        # the current plan and failures
    Route("/api/mappings/{id_or_name}/recover", routing.recover, ("POST",)),         # {target}: operator recovery
    Route("/api/mappings/{id_or_name}/recoveries", routing.list_recoveries, ("GET",)),  # [limit]: recovery jobs
    Route("/api/mappings/{id_or_name}/changes/{seq}", routing.get_change, ("GET",)),  # every target's state of one change
    Route("/api/jobs", jobs.list_jobs, ("GET",)),                                   # [mapping] [limit] [before]
    Route("/api/nm-jobs", nm_jobs.list_nm_jobs, ("GET",)),                          # N:M jobs (/api/jobs is the job log)
    Route("/api/nm-jobs", nm_jobs.create_nm_job, ("POST",), status_code=201),       # NmJobIn
    Route("/api/nm-jobs/{id_or_name}", nm_jobs.get_nm_job, ("GET",)),
    Route("/api/nm-jobs/{id_or_name}", nm_jobs.delete_nm_job, ("DELETE",), status_code=204),  # and its member mappings
    Route("/api/nm-jobs/{id_or_name}/conflicts", nm_jobs.list_conflicts, ("GET",)),  # [limit]: newest first
    Route("/api/exceptions", jobs.list_exceptions, ("GET",)),                       # [mapping] [limit] [open]
    Route("/api/advances", jobs.list_advances, ("GET",)),                           # [mapping] [target] [limit]: with routes
    Route("/api/stats", stats.get_stats, ("GET",)),                                 # [by] [since] [until] [format=json|csv]
    Route("/api/retention", retention.get_retention, ("GET",)),                     # days kept per kind, last prune
    Route("/api/retention", retention.put_retention, ("PUT",)),                     # RetentionIn: fields left out keep their value
    Route("/api/tokens/join", tokens.list_join_tokens, ("GET",)),                  # ids, never tokens; expired too
    Route("/api/tokens/join", tokens.create_join_token, ("POST",), status_code=201),  # [{ttl_s}]
    Route("/api/tokens/join/{token_id}", tokens.revoke_join_token, ("DELETE",), status_code=204),  # hash prefix
    Route("/api/tokens/api", tokens.list_api_tokens, ("GET",)),                    # not the admin token
    Route("/api/tokens/api", tokens.create_api_token, ("POST",), status_code=201),  # {name}
    Route("/api/tokens/api/{token_id}", tokens.revoke_api_token, ("DELETE",), status_code=204),  # even its own
    Route("/api/events", events.list_events, ("GET",)),                             # [since] [timeout_s] [limit]
    Route("/api/whoami", whoami.whoami, ("GET",)),                                  # the caller's token id and scope
    Route("/api/policies", policies.list_policies, ("GET",)),
    Route("/api/policies", policies.put_policy, ("PUT",)),                           # PolicyIn: upsert by scope/pair
    Route("/api/policies/{policy_id}", policies.delete_policy, ("DELETE",), status_code=204),
    # --- Cache synchronization ---
    Route("/api/providers", sites_api.list_providers, ("GET",)),
    Route("/api/sites", sites_api.list_sites, ("GET",)),
    Route("/api/sites", sites_api.create_site, ("POST",), status_code=201),        # SiteIn; shows the secret once
    Route("/api/sites/{id_or_name}", sites_api.get_site, ("GET",)),
    Route("/api/sites/{id_or_name}", sites_api.update_site, ("PATCH",)),           # SitePatch
    Route("/api/sites/{id_or_name}", sites_api.delete_site, ("DELETE",), status_code=204),
    Route("/api/purges", sites_api.list_purges, ("GET",)),                         # [site] [limit] [before]
    # --- Monitoring ---
    Route("/api/thresholds", thresholds.list_thresholds, ("GET",)),
    Route("/api/thresholds", thresholds.create_threshold, ("POST",), status_code=201),  # ThresholdIn
    Route("/api/thresholds/{threshold_id}", thresholds.delete_threshold, ("DELETE",), status_code=204),
    Route("/api/probes", probes.list_probes, ("GET",)),                             # with latest results
    Route("/api/probes", probes.create_probe, ("POST",), status_code=201),          # ProbeIn
    Route("/api/probes/{probe_id}", probes.delete_probe, ("DELETE",), status_code=204),
    Route("/api/alerts", alerts.list_alerts, ("GET",)),                             # [state] [server] [open] [limit]
    Route("/api/alerts/{alert_id}/acknowledge", alerts.acknowledge_alert, ("POST",)),  # [{by}]
    Route("/api/alert-channels", alert_channels.list_channels, ("GET",)),
    Route("/api/alert-channels", alert_channels.create_channel, ("POST",), status_code=201),  # ChannelIn
    Route("/api/alert-channels/{channel_id}", alert_channels.delete_channel, ("DELETE",), status_code=204),
    Route("/metrics", metrics.get_metrics, ("GET",)),                               # Prometheus text
)
# fmt: on

ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404),
    (RouteError, 400),  # a manual route the planner refuses: loop, unknown server, target twice
    (ConfigError, 422),
    (AuthError, 403),
    (StoreError, 503),
)


def _error_handler(status_code: int) -> Callable[[Request, Exception], Any]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if status_code >= 500:
            logger.error("request failed", extra={"path": request.url.path, "error": str(exc)})
        return JSONResponse({"detail": str(exc)}, status_code=status_code)

    return handle


def _add_openapi_route(app: FastAPI) -> None:
    """Serve the OpenAPI spec at /openapi.json to a read or admin token (FastAPI's own route
    needs none): the spec names every route, parameter and model, the map of what a stolen token
    could do, and nothing needs it without one (the console and the CLI do not read it;
    schemathesis and a Swagger UI elsewhere send the header like any client)."""

    async def openapi_spec() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.add_api_route(
        "/openapi.json",
        openapi_spec,
        methods=["GET"],
        dependencies=[Depends(require_token)],
        include_in_schema=False,
    )


def create_app(
    *,
    store: Store,
    ca: CertificateAuthority,
    events: EventBus,
    admin_token: str,
    control_address: str,
    on_change: Callable[[], None],
    router: Router | None = None,
    master_node_id: str = "",
    source_failures: SourceFailures | None = None,
) -> FastAPI:
    """Build the REST API over the master's store, CA and event bus.

    Args:
        admin_token: accepted on every route, besides the API tokens in the store.
        control_address: host:port of the control server, told to agents when they join.
        on_change: called (on the event loop's thread) after every mutation, so that the
            control server pushes new assignments.
        router: the master's re-planner; a fresh one over `store` when not given (tests, tools).
        master_node_id: fingerprint of the control server's certificate, told to agents when they
            join so that they connect to no other; "" without a control server (tests, tools).
        source_failures: the control server's sources that cannot run (the mapping status
            shows them); none without a control server (tests, tools).
    """
    if not admin_token:
        raise ConfigError("the master needs a non-empty admin token")
    # No /docs or /redoc: FastAPI's pages load Swagger UI's and ReDoc's scripts from a CDN
    # (unpinned, no integrity check) on the console's origin, where the console keeps its token
    # in sessionStorage, readable by any script there. The spec stays at /openapi.json, behind a
    # token like every /api route (`_add_openapi_route`).
    app = FastAPI(
        title="relaysync master",
        version=__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = ApiContext(
        store=store,
        ca=ca,
        events=events,
        admin_token=admin_token,
        control_address=control_address,
        master_node_id=master_node_id,
        on_change=on_change,
        router=router or Router(store, events, on_change=lambda: call_on_event_loop(on_change)),
        source_failures=source_failures or SourceFailures(),
    )
    for route in ROUTES:
        app.add_api_route(
            route.path,
            route.endpoint,
            methods=list(route.methods),
            status_code=route.status_code,
            dependencies=[] if route.public else [Depends(require_token)],
            tags=[
                route.path.split("/")[2]
                if route.path.startswith("/api/")
                else route.path.strip("/")
            ],
        )
    _add_openapi_route(app)
    for error_type, status_code in ERROR_STATUS:
        app.add_exception_handler(error_type, _error_handler(status_code))
    app.add_exception_handler(join.JoinDenied, join.denied)  # {detail, code}: auth/join_refusals.py
    app.add_middleware(
        RequestLimits,
        max_body_bytes=API_MAX_BODY_BYTES,
        per_path={"/api/join": API_JOIN_MAX_BODY_BYTES},
    )
    mount_console(app)  # `/` and `/ui/*`: the web console, a client of the routes above
    return app
