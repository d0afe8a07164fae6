"""Request and response bodies of the HTTP API (DESIGN.md, "HTTP API (v1)")."""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from app.services.catalog import EXTERNAL_ID_MAX, EXTERNAL_ID_PATTERN, LABEL_MAX, LABEL_PATTERN
from app.store.filters import FIELD_PATTERN, MAX_FIELDS, MAX_VALUES, ItemFilter
from model.recipe import TUNABLE_FIELDS, TrainRecipe

MAX_ID = 2**63 - 1  # SQLite's largest integer
MAX_QUERIES = 256  # queries in one batch search

Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN.pattern)]
ExternalId = Annotated[
    str, StringConstraints(pattern=EXTERNAL_ID_PATTERN.pattern, max_length=EXTERNAL_ID_MAX)
]


class Strict(BaseModel):
    """A request body or part of one: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class JsonBody(Strict):
    """A JSON request body, validated as its JSON Schema reads: strictly (no ``true`` for 1,
    no ``"5"`` for 5), except that a number with a zero fraction (``5.0``) is an integer."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _integral_numbers_are_integers(cls, value: Any, info: ValidationInfo) -> Any:
        is_integral = isinstance(value, float) and value.is_integer()
        if is_integral and _accepts_int_only(cls.model_fields[str(info.field_name)].annotation):
            return int(value)
        return value


def _accepts_int_only(annotation: Any) -> bool:
    """Whether ``int`` is among the annotation's number types and ``float`` is not."""
    found: set[Any] = set()

    def walk(tp: Any) -> None:
        if get_origin(tp) is Annotated:
            walk(get_args(tp)[0])
        elif get_origin(tp) in (Union, UnionType):
            for arg in get_args(tp):
                walk(arg)
        else:
            found.add(tp)

    walk(annotation)
    return int in found and float not in found


class Status(BaseModel):
    status: str


class ModelInfo(BaseModel):
    version: str
    backbone: str
    model_type: str
    embedding_dim: int
    input_size: int
    stem: str
    labels: list[str]
    trained_at: str
    backend: str = Field(description="the inference backend running it (EMBED_BACKEND)")
    backend_selection: dict[str, Any] = Field(
        description="how it was chosen: 'explicit' (EMBED_BACKEND), 'measured' (images/s of"
        " every candidate at one batch size, and those that could not run), or 'remembered'"
        " (a measurement on this CPU with these libraries and weights)"
    )
    flip_tta: bool = Field(
        description="each image is embedded with its mirror image and the two averaged"
    )
    int8: dict[str, Any] | None = Field(
        description="int8 calibration quality against fp32 on the held-out split, if calibrated"
    )
    metrics: dict[str, Any]


class ModelVersion(BaseModel):
    version: str
    active: bool
    source: str
    created_at: str
    trained_at: str | None
    model_type: str
    metrics: dict[str, Any]


class ActivationProgress(BaseModel):
    reembedded: int
    total: int


class ModelVersionList(BaseModel):
    models: list[ModelVersion]
    activating: str | None = Field(description="the version being activated, if any")
    activation_progress: ActivationProgress | None = None
    last_activation: dict[str, Any] = Field(
        description="the outcome of the last activation since start-up: its result, or"
        " status 'failed' and the error"
    )
    unreadable_at_start: list[int] = Field(
        description="items whose stored image could not be read when start-up embedded the"
        " items missing a vector: they are stored but cannot be found by search"
    )


class Activation(BaseModel):
    version: str
    status: Literal["activating", "active"]
    reembedded: int | None = None
    unreadable_items: int | None = Field(
        default=None,
        description="stored items whose image could not be read: they keep no vector and"
        " cannot be found by search until re-added",
    )
    unreadable_ids: list[int] | None = Field(default=None, description="the first 100 of them")
    seconds: float | None = None


class Embedding(BaseModel):
    filename: str
    vector: list[float]


class EmbedResponse(BaseModel):
    model_version: str
    dim: int
    embeddings: list[Embedding]


class ItemSummary(BaseModel):
    id: int
    external_id: str | None = Field(description="the caller's own id, if it gave one")
    label: str | None
    filename: str


class Item(ItemSummary):
    metadata: dict[str, Any]
    image_hash: str
    model_version: str
    created_at: str
    vector: list[float] | None = Field(
        default=None,
        exclude_if=lambda vector: vector is None,  # only there when asked for
        description="the active model's vector, with include=vector",
    )


class ItemsCreated(BaseModel):
    items: list[ItemSummary]


class ItemList(BaseModel):
    items: list[Item]
    total: int
    limit: int
    offset: int


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _nonzero_vector(schema: dict[str, Any]) -> None:
    schema.pop("default", None)
    schema["contains"] = {"not": {"const": 0}}


def _check_filter(value: dict[str, Any]) -> dict[str, Any]:
    ItemFilter.parse(value)  # the rules the store applies, as a 422
    return value


FilterScalar = (
    (Annotated[str, Field(max_length=1024)] | Annotated[int, Field(ge=-MAX_ID - 1, le=MAX_ID)])
    | float
    | bool
    | None
)
Filter = Annotated[
    dict[
        Annotated[str, StringConstraints(pattern=FIELD_PATTERN.pattern)],
        FilterScalar | Annotated[list[FilterScalar], Field(min_length=1, max_length=MAX_VALUES)],
    ],
    Field(
        max_length=MAX_FIELDS,
        description=(
            "exact matches an item must meet, all of them: 'label', 'external_id' or "
            "'metadata.<key>' (nested keys joined by '.') to a JSON value, or to a list of "
            "values any of which matches; applied before the nearest-neighbour search"
        ),
        examples=[{"label": "cat", "metadata.source": "cifar"}],
        json_schema_extra={"additionalProperties": False},
    ),
    AfterValidator(_check_filter),
]


class Filtered(Strict):
    """A request that restricts the items it works on, by ``filter`` and by ``label``."""

    filter: SkipJsonSchema[None] | Filter = Field(default=None, json_schema_extra=_without_default)
    label: str | None = Field(
        default=None, max_length=LABEL_MAX, description="only items with this label"
    )

    def item_filter(self) -> ItemFilter | None:
        """Both restrictions as the store's filter; None when the request has neither."""
        return ItemFilter.combine(
            self.label, ItemFilter.parse(self.filter) if self.filter else None
        )


class SearchOptions(Filtered):
    """The options of a search (in multipart, fields beside the files; 'filter' as JSON)."""

    k: int = Field(default=10, ge=1, le=1000)


class ImageData(JsonBody):
    """An image in a JSON body."""

    data: str = Field(
        min_length=1,
        description="the image file's bytes in base64 (a 'data:image/...;base64,' prefix is"
        " allowed); the whole body is bounded by EMBED_MAX_UPLOAD_MB",
        json_schema_extra={"contentEncoding": "base64"},
    )
    filename: str | None = Field(default=None, max_length=1024, description="for display only")


class SearchTarget(JsonBody):
    """What to search near: a stored item's id, a vector or an image, exactly one of them."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "oneOf": [{"required": ["id"]}, {"required": ["vector"]}, {"required": ["image"]}]
        },
    )

    # present means not null: the schema shows the types alone, without null or a default
    id: SkipJsonSchema[None] | Annotated[int, Field(ge=1, le=MAX_ID)] = Field(
        default=None, json_schema_extra=_without_default
    )
    vector: SkipJsonSchema[None] | Annotated[list[float], Field(min_length=1, max_length=4096)] = (
        Field(
            default=None,
            description="a query vector of the active model's length; not all zeros",
            json_schema_extra=_nonzero_vector,
        )
    )
    image: SkipJsonSchema[None] | ImageData = Field(
        default=None, json_schema_extra=_without_default
    )

    @model_validator(mode="before")
    @classmethod
    def _exactly_one_kind(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [name for name in ("id", "vector", "image") if name in data]
            if not given:
                raise ValueError("give one of 'id', 'vector' and 'image'")
            if len(given) > 1:
                raise ValueError(f"give only one of 'id', 'vector' and 'image', not {given}")
            if data[given[0]] is None:
                raise ValueError(f"'{given[0]}' must not be null")
        return data


class SearchQuery(SearchOptions, SearchTarget):
    """One query and the search options."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"id": 1, "k": 5},
                {"id": 1, "k": 10, "filter": {"label": "cat", "metadata.source": "cifar"}},
                {"image": {"data": "<base64 of a JPEG>", "filename": "cat.jpg"}, "k": 3},
            ],
            "oneOf": [{"required": ["id"]}, {"required": ["vector"]}, {"required": ["image"]}],
        },
    )


class BatchSearchQuery(SearchOptions, JsonBody):
    """Several queries with one set of options, answered in order."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"queries": [{"id": 1}, {"id": 2}], "k": 5, "filter": {"label": "cat"}}]
        },
    )

    queries: list[SearchTarget] = Field(
        min_length=1,
        max_length=MAX_QUERIES,
        description=f"at most {MAX_QUERIES}, of which at most EMBED_MAX_FILES images",
    )


class Neighbor(BaseModel):
    id: int
    label: str | None
    score: float
    filename: str


class Prediction(BaseModel):
    label: str
    confidence: float


class SearchHits(BaseModel):
    neighbors: list[Neighbor]
    prediction: Prediction | None


class SearchResponse(SearchHits):
    model_version: str


class BatchSearchResponse(BaseModel):
    model_version: str
    results: list[SearchHits] = Field(description="one per query, in the queries' order")


class EmbedJson(JsonBody):
    """Images to embed, as a JSON body."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"images": [{"data": "<base64 of a JPEG>", "filename": "cat.jpg"}]}]
        },
    )

    images: list[ImageData] = Field(min_length=1, description="at most EMBED_MAX_FILES")


class ItemFields(Strict):
    labels: list[Label] | None = Field(
        default=None, description="one label per image, or one for all"
    )
    external_ids: list[ExternalId] | None = Field(
        default=None, description="your own id for each image, one per image (none may be in use)"
    )


class ItemsForm(ItemFields):
    """The text fields of a multipart ``POST /items``."""

    metadata: str | None = Field(
        default=None, description="a JSON object for every file (or a list, one per file)"
    )


class ItemsJson(ItemFields, JsonBody):
    """Labelled images to store, as a JSON body."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "images": [{"data": "<base64 of a JPEG>", "filename": "tom.jpg"}],
                    "labels": ["cat"],
                    "metadata": {"source": "catalogue"},
                    "external_ids": ["sku-1041"],
                }
            ]
        },
    )

    images: list[ImageData] = Field(min_length=1, description="at most EMBED_MAX_FILES")
    metadata: dict[str, Any] | list[dict[str, Any]] | None = Field(
        default=None, description="an object for every image, or a list of objects, one per image"
    )


class ClusterRequest(Filtered, JsonBody):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"k": 2}, {"k": "auto", "label": None, "seed": 0}]},
    )

    k: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=2, description="number of clusters (at most EMBED_MAX_K), or 'auto'"
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    projection: bool = Field(default=False, description="also return 2-D PCA coordinates")
    limit: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="list the assignments (and 2-D points) of at most this many items, the"
        " lowest ids; cluster sizes, label counts and metrics always cover every item",
    )


class ClusterSummary(BaseModel):
    cluster: int
    size: int
    majority_label: str | None
    label_counts: dict[str, int]


class Assignment(BaseModel):
    id: int
    cluster: int


class ClusterMetrics(BaseModel):
    purity: float | None
    nmi: float | None
    ari: float | None
    silhouette: float | None


class Point(BaseModel):
    id: int
    x: float
    y: float


class ClusterResponse(BaseModel):
    k: int
    model_version: str
    items: int = Field(description="how many items were clustered")
    fitted_on: int = Field(
        description="how many of them k-means was fitted on: all, or a seeded sample of"
        " EMBED_CLUSTER_SAMPLE when there are more (the rest are assigned to the nearest"
        " centroid)"
    )
    clusters: list[ClusterSummary]
    assignments: list[Assignment]
    assignments_truncated: bool = Field(description="true when 'limit' cut the list short")
    metrics: ClusterMetrics
    projection: list[Point] | None = None


class Dataset(Strict):
    source: Literal["items", "directory", "archive"] = "items"
    path: str | None = Field(default=None, max_length=4096)


# ``POST /train`` takes the recipe fields a caller may choose, with the types, defaults,
# limits and descriptions of ``model.recipe.TrainRecipe``.
RecipeOptions: type[BaseModel] = create_model(
    "RecipeOptions",
    __base__=JsonBody,
    **{  # type: ignore[call-overload]
        name: (TrainRecipe.model_fields[name].annotation, TrainRecipe.model_fields[name])
        for name in TUNABLE_FIELDS
    },
)


class TrainRequest(RecipeOptions):  # type: ignore[misc, valid-type]
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"dataset": {"source": "items"}, "epochs": 5, "activate": "if_better"},
                {
                    "dataset": {"source": "directory", "path": "/datasets/pets"},
                    "model_type": "triplet",
                    "mining": "semi_hard",
                    "instance_weight": 0.5,
                    "epochs": 10,
                    "activate": "never",
                },
            ]
        },
    )

    dataset: Dataset = Field(default_factory=Dataset)
    embedding_dim: int | None = Field(
        default=None, ge=2, le=2048, description="default: the active model's"
    )
    activate: Literal["if_better", "always", "never"] = "if_better"
    init: Literal["active", "scratch"] = Field(
        default="active", description="fine-tune the active model, or train from scratch"
    )


class Progress(BaseModel):
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    loss: float | None = None


class Job(BaseModel):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    request: dict[str, Any]
    progress: Progress
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    model_version: str | None
    activated: bool
    error: str | None
    created_at: str
    updated_at: str


class JobList(BaseModel):
    jobs: list[Job]


class ImportFailure(BaseModel):
    member: str = Field(description="the archive member's name")
    detail: str


class ImportJob(BaseModel):
    import_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    filename: str = Field(description="the uploaded archive's name")
    total: int = Field(description="images in the archive")
    added: int = Field(description="stored as items so far")
    failed: int = Field(description="images that could not be decoded (skipped)")
    failures: list[ImportFailure] = Field(description="the first 20 of them, and why")
    labels: dict[str, int] = Field(description="items added per label (class folder)")
    error: str | None = Field(description="why the import failed or stopped, if it did")
    created_at: str
    updated_at: str


class ImportList(BaseModel):
    imports: list[ImportJob]
