"""One builder for Lago's CRUD resources, so every resource answers in the same shapes."""

from collections.abc import Callable
from typing import Any
from uuid import UUID

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from api.http import Envelope, Output, decode_body, meta, pagination
from application.billing import Billing

Find = Callable[[Billing, UUID, str], Any]


def crud_controller(
    *,
    path: str,
    name: str,
    plural_name: str,
    root: str,
    plural_root: str,
    request: type[Envelope],
    response: type[Output],
    list_response: type[Output],
    to_object: Callable[[Any], Output] | None = None,
    find: Find,
    find_all: Callable[[Billing, UUID, int, int], tuple[list[Any], int]],
    create: Callable[[Billing, UUID, Any], Any] | None = None,
    update: Callable[[Billing, UUID, str, Any], Any] | None = None,
    destroy: Find | None = None,
    to_object_reading: Callable[[Any, Billing], Output] | None = None,
) -> type[Controller]:
    """A controller for POST, PUT, GET, GET list and DELETE of one resource, Lago style.

    `name` makes Lago's operation ids (createTax, findAllTaxes...). Handlers get the raw body
    and decode it with msgspec, so decimals never pass through a float.
    """
    handlers: dict[str, Any] = {"path": path, "tags": (name,)}
    item = "/{key:str}"  # The resource's code or external_id, as Lago's paths take it.

    def show(aggregate: Any, billing: Billing) -> Output:
        """The resource's object; to_object_reading when showing it reads more (its taxes)."""
        if to_object_reading is not None:
            return to_object_reading(aggregate, billing)
        assert to_object is not None, name
        return to_object(aggregate)

    def wrap(aggregate: Any, billing: Billing) -> Output:
        return response(**{root: show(aggregate, billing)})

    if create is not None:

        @post(operation_id=f"create{name}", status_code=200, sync_to_thread=True)
        def create_handler(
            self: Controller,
            raw_body: NamedDependency[bytes],
            billing: NamedDependency[Billing],
            organization_id: NamedDependency[UUID],
        ) -> response:  # type: ignore[valid-type]
            body = getattr(decode_body(raw_body, request, root), root)
            return wrap(create(billing, organization_id, body), billing)

        handlers["create"] = create_handler

    if update is not None:

        @put(item, operation_id=f"update{name}", sync_to_thread=True)
        def update_handler(
            self: Controller,
            key: FromPath[str],
            raw_body: NamedDependency[bytes],
            billing: NamedDependency[Billing],
            organization_id: NamedDependency[UUID],
        ) -> response:  # type: ignore[valid-type]
            body = getattr(decode_body(raw_body, request, root), root)
            return wrap(update(billing, organization_id, key, body), billing)

        handlers["update"] = update_handler

    @get(item, operation_id=f"find{name}", sync_to_thread=True)
    def find_handler(
        self: Controller,
        key: FromPath[str],
        billing: NamedDependency[Billing],
        organization_id: NamedDependency[UUID],
    ) -> response:  # type: ignore[valid-type]
        return wrap(find(billing, organization_id, key), billing)

    handlers["find"] = find_handler

    @get(operation_id=f"findAll{plural_name}", sync_to_thread=True)
    def find_all_handler(
        self: Controller,
        billing: NamedDependency[Billing],
        organization_id: NamedDependency[UUID],
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
    ) -> list_response:  # type: ignore[valid-type]
        page, per_page = pagination(page, per_page)
        aggregates, total = find_all(billing, organization_id, page, per_page)
        return list_response(
            **{
                plural_root: [show(a, billing) for a in aggregates],
                "meta": meta(page, per_page, total),
            }
        )

    handlers["find_all"] = find_all_handler

    if destroy is not None:

        @delete(item, operation_id=f"destroy{name}", status_code=200, sync_to_thread=True)
        def destroy_handler(
            self: Controller,
            key: FromPath[str],
            billing: NamedDependency[Billing],
            organization_id: NamedDependency[UUID],
        ) -> response:  # type: ignore[valid-type]
            return wrap(destroy(billing, organization_id, key), billing)

        handlers["destroy"] = destroy_handler

    return type(f"{name}Controller", (Controller,), handlers)
