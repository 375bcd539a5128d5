"""Request limits and document caches whose cost is linear in the size of the document.

Strawberry's ``QueryDepthLimiter`` and ``MaxAliasesLimiter`` walk every fragment spread again
each time it is spread, without memoising: a document whose fragments each spread the next
twice (``fragment F0 on Query { ...F1 ...F1 }`` ...) costs 2^N to check, and a 30-level one
(about 300 tokens, under every limit) blocks the event loop for hours. The rules here give the
same messages, but summarise each definition once and combine the summaries over the
fragment graph, as graphql-core's own ``FragmentNestingVisitor`` does.

Strawberry's ``ParserCache`` and ``ValidationCache`` keep 1,024 documents of any size each:
a few megabyte-sized string literals, or a thousand documents of 2,000 tokens (about 1.2 MiB
of AST each), pin hundreds of megabytes for good. ``DocumentCache`` is bounded by an estimate
of the memory its entries hold, and does not keep large documents at all.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    OperationDefinitionNode,
    SelectionSetNode,
    Token,
    ValidationContext,
    ValidationRule,
    parse,
    validate,
)
from graphql.execution.executor import Executor
from graphql.validation import OverlappingFieldsCanBeMergedRule
from strawberry.extensions import SchemaExtension
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule
from strawberry.types import ExecutionContext, StreamExecutionResult
from strawberry.types.execution import ParseOptions

__all__ = [
    "DocumentCache",
    "FieldMergeBudget",
    "LimitsRunner",
    "QuietExecutionContext",
    "RequestLimits",
    "alias_limit_rule",
    "depth_limit_rule",
    "extensions_runner",
]

# The work graphql-core's OverlappingFieldsCanBeMergedRule may do on one document, in its own
# units (about one per pair of same-named fields compared). Its default, 500,000, lets a
# 3.5 KB document (`{ me{id} me{id} ... }`, 500 times) block the event loop for seconds;
# documents that do not repeat a response name spend nothing, GraphiQL's introspection
# included, and a client repeating fields through fragments spends tens to hundreds.
FIELD_MERGE_BUDGET = 20_000
# What a parsed document holds per token (its Token and its share of the AST nodes) on
# CPython 3.11: 550 to 620 bytes measured with tracemalloc, rounded up.
TOKEN_BYTES = 640
# A validation error: the GraphQLError, its locations and node list, besides its message.
ERROR_BYTES = 1024


# Depth and aliases ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Summary:
    """One definition's own selections, with its fragment spreads left unexpanded."""

    height: int = 0  # the deepest selection, in fields below the definition's root
    aliases: int = 0
    depth_spreads: list[tuple[str, int]] = field(default_factory=list)  # (fragment, depth)
    alias_spreads: list[str] = field(default_factory=list)


def _summarise(selection_set: SelectionSetNode) -> _Summary:
    # Iterative: a document may nest a thousand levels within its token limit.
    summary = _Summary()
    stack: list[tuple[SelectionSetNode, int, bool]] = [(selection_set, 0, True)]
    while stack:
        selections, depth, counted = stack.pop()
        for selection in selections.selections:
            if counted:
                summary.height = max(summary.height, depth)
            if isinstance(selection, FragmentSpreadNode):
                summary.alias_spreads.append(selection.name.value)
                if counted:
                    summary.depth_spreads.append((selection.name.value, depth))
                continue
            nested = selection.selection_set  # type: ignore[attr-defined]
            if isinstance(selection, FieldNode):
                if selection.alias:
                    summary.aliases += 1
                if nested:
                    # Like Strawberry's limiter, introspection fields do not add depth.
                    stack.append((nested, depth + 1, counted and not selection.name.value.startswith("__")))
            elif nested:  # an inline fragment: the same level
                stack.append((nested, depth, counted))
    return summary


def _children_first(summaries: dict[str, _Summary]) -> list[str]:
    """The fragments, each after the ones it spreads (a spread that closes a cycle is skipped:
    graphql-core's NoFragmentCycles refuses the document; here it just must not loop)."""
    order: list[str] = []
    seen: set[str] = set()
    for root in summaries:
        if root in seen:
            continue
        seen.add(root)
        path: list[tuple[str, Iterator[str]]] = [(root, iter(summaries[root].alias_spreads))]
        while path:
            name, spreads = path[-1]
            for spread in spreads:
                if spread in summaries and spread not in seen:
                    seen.add(spread)
                    path.append((spread, iter(summaries[spread].alias_spreads)))
                    break
            else:
                path.pop()
                order.append(name)
    return order


@dataclass(slots=True)
class _Expanded:
    """Depth and alias count of each definition with its fragment spreads expanded."""

    heights: dict[str, int]
    aliases: dict[str, int]

    def height(self, summary: _Summary) -> int:
        height = summary.height
        for spread, depth in summary.depth_spreads:
            height = max(height, depth + self.heights.get(spread, 0))
        return height

    def alias_count(self, summary: _Summary) -> int:
        return summary.aliases + sum(self.aliases.get(spread, 0) for spread in summary.alias_spreads)


def _expand(document: DocumentNode) -> tuple[_Expanded, list[tuple[OperationDefinitionNode, _Summary]]]:
    """Every fragment summarised and expanded once: linear in the size of the document.

    A fragment spread twice is counted twice, as Strawberry's limiters count (the alias
    count of a document may so be exponential in its size; it is a plain int).
    """
    summaries: dict[str, _Summary] = {}
    operations: list[tuple[OperationDefinitionNode, _Summary]] = []
    for definition in document.definitions:
        if isinstance(definition, FragmentDefinitionNode):
            summaries.setdefault(definition.name.value, _summarise(definition.selection_set))
        elif isinstance(definition, OperationDefinitionNode):
            operations.append((definition, _summarise(definition.selection_set)))
    expanded = _Expanded(heights={}, aliases={})
    for name in _children_first(summaries):
        # A spread not yet expanded here closes a cycle, and counts as nothing.
        expanded.heights[name] = expanded.height(summaries[name])
        expanded.aliases[name] = expanded.alias_count(summaries[name])
    return expanded, operations


def depth_limit_rule(max_depth: int) -> type[ASTValidationRule]:
    """A validation rule refusing an operation that selects deeper than ``max_depth`` fields
    below its root field (``{ me { id } }`` is 1), fragments expanded; introspection fields
    (``__schema`` ...) are not counted. Strawberry's ``QueryDepthLimiter`` message."""

    class DepthLimit(ValidationRule):
        def enter_document(self, node: DocumentNode, *_args: Any) -> None:
            expanded, operations = _expand(node)
            for operation, summary in operations:
                if expanded.height(summary) > max_depth:
                    name = operation.name.value if operation.name else "anonymous"
                    self.report_error(
                        GraphQLError(f"'{name}' exceeds maximum operation depth of {max_depth}", operation)
                    )

    return DepthLimit


def alias_limit_rule(max_aliases: int) -> type[ASTValidationRule]:
    """A validation rule refusing a document with more than ``max_aliases`` aliased fields
    over all its operations, fragments expanded. Strawberry's ``MaxAliasesLimiter`` message."""

    class AliasLimit(ValidationRule):
        def enter_document(self, node: DocumentNode, *_args: Any) -> None:
            expanded, operations = _expand(node)
            total = sum(expanded.alias_count(summary) for _, summary in operations)
            if total > max_aliases:
                self.report_error(GraphQLError(f"{total} aliases found. Allowed: {max_aliases}"))

    return AliasLimit


class FieldMergeBudget(OverlappingFieldsCanBeMergedRule):
    """graphql-core's field-merging rule with a smaller work budget (``FIELD_MERGE_BUDGET``):
    over it, validation stops with "Validation aborted." (BAD_USER_INPUT)."""

    def __init__(self, context: ValidationContext) -> None:
        super().__init__(context)
        self.rule_context.remaining_complexity_budget = FIELD_MERGE_BUDGET


# Document caches -----------------------------------------------------------------------------


@dataclass(slots=True)
class CachedDocument:
    """A parsed document and its validation results, by the rules they were found with."""

    document: DocumentNode
    cost: int  # estimated bytes held by the document and the results
    validations: dict[tuple[type[ASTValidationRule], ...], list[GraphQLError]] = field(default_factory=dict)


def document_cost(query: str, document: DocumentNode) -> int | None:
    """An upper estimate of the memory ``query`` and its ``document`` hold, in bytes; None when
    the document has no locations to count its tokens by."""
    if document.loc is None:
        return None
    tokens = 0
    token: Token | None = document.loc.start_token
    while token is not None:  # the document keeps every token alive through its locations
        tokens += 1
        token = token.next
    # The query text, the names and strings the AST copies out of it, and the tokens.
    return sys.getsizeof(query) + len(query) + TOKEN_BYTES * tokens


def errors_cost(errors: Iterable[GraphQLError]) -> int:
    """An estimate of the memory a list of validation errors holds, in bytes."""
    return sum(ERROR_BYTES + sys.getsizeof(error.message) for error in errors)


class DocumentCache:
    """A least-recently-used map from query text to ``CachedDocument``, bounded by the
    estimated bytes of its entries rather than by their number. An entry over
    ``max_entry_bytes`` is not kept: large documents are parsed and validated each time.
    """

    def __init__(self, max_bytes: int, max_entry_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.bytes = 0
        self._entries: OrderedDict[Any, tuple[CachedDocument, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: Any) -> CachedDocument | None:
        """The entry for ``key``, now the most recently used; None when there is none."""
        kept = self._entries.get(key)
        if kept is None:
            return None
        self._entries.move_to_end(key)
        return kept[0]

    def put(self, key: Any, entry: CachedDocument) -> bool:
        """Keep ``entry`` under ``key`` at its current ``cost`` (replacing any, or accounting
        it anew), evicting the least recently used entries to stay within ``max_bytes``.
        False, and nothing kept under ``key``, when the entry is too large."""
        self.discard(key)
        cost = entry.cost
        if cost > self.max_entry_bytes:
            return False
        self._entries[key] = (entry, cost)
        self.bytes += cost
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
        return True

    def discard(self, key: Any) -> None:
        """Forget ``key`` if it is kept."""
        kept = self._entries.pop(key, None)
        if kept is not None:
            self.bytes -= kept[1]


@functools.lru_cache(maxsize=8)
def _validation_rules(rules: tuple[type[ASTValidationRule], ...]) -> tuple[type[ASTValidationRule], ...]:
    """What validation runs for an operation's ``rules``: graphql-core's field-merging rule on a
    budget, and Strawberry's own two rules. The same few tuples every time: built once each."""
    return (
        *(FieldMergeBudget if rule is OverlappingFieldsCanBeMergedRule else rule for rule in rules),
        MaybeNullValidationRule,
        OneOfInputValidationRule,
    )


def _cache_key(query: str, parse_options: ParseOptions) -> tuple[str, tuple[tuple[str, Any], ...]]:
    return query, tuple(sorted(parse_options.items()))


class RequestLimits(SchemaExtension):
    """Every operation's limits, and its document parsed and validated through a ``DocumentCache``.

    One extension, not four (Strawberry's ``MaxTokensLimiter`` and ``AddValidationRules``, a
    cached parse and a cached validation): Strawberry builds each extension, and looks up each
    of its hooks, anew for every operation, which cost a cached ``sendChatMessage`` about a
    tenth of its CPU. Alone, it runs through ``LimitsRunner``, which calls its steps
    (``start``, ``parse``, ``validate``) without Strawberry's per-hook wrappers.

    - Parsing stops at ``max_tokens`` tokens. A document that fails to parse is left to
      Strawberry's own parse step, which reports the syntax error as the request's error (the
      stock ``ParserCache`` raises it out of the operation: over websockets, a silent
      ``complete``).
    - Validation runs ``rules`` (the depth and alias limits, shared by every operation so that
      results can be cached) besides Strawberry's own, and remembers its result with the
      document. Suggestions ("Did you mean ...?") are left out of the messages when
      ``hide_suggestions`` (production: they would reveal the schema).
    """

    def __init__(
        self,
        cache: DocumentCache,
        *,
        max_tokens: int,
        rules: Iterable[type[ASTValidationRule]] = (),
        hide_suggestions: bool = False,
    ) -> None:
        self.cache = cache
        self.max_tokens = max_tokens
        self.rules = tuple(rules)
        self.hide_suggestions = hide_suggestions

    def start(self) -> None:
        """Before the operation: the token limit for parsing, the rules for validation."""
        context = self.execution_context
        context.parse_options["max_tokens"] = self.max_tokens
        context.validation_rules = context.validation_rules + self.rules

    def parse(self) -> None:
        """Before Strawberry's parse step: the cached document, else the document parsed
        (and cached when small enough); Strawberry's own step then parses nothing."""
        context = self.execution_context
        if context.query:
            key = _cache_key(context.query, context.parse_options)
            entry = self.cache.get(key)
            if entry is None:
                with contextlib.suppress(GraphQLError):
                    document = parse(context.query, **context.parse_options)
                    context.graphql_document = document
                    cost = document_cost(context.query, document)
                    if cost is not None:
                        self.cache.put(key, CachedDocument(document, cost))
            else:
                context.graphql_document = entry.document

    def validate(self) -> None:
        """Before Strawberry's validation step: the cached result for this document and these
        rules, else the document validated (and the result cached with it); Strawberry's own
        step then validates nothing."""
        context = self.execution_context
        document = context.graphql_document
        if document is not None and context.validation_rules:
            rules = _validation_rules(tuple(context.validation_rules))
            key = _cache_key(context.query or "", context.parse_options)
            entry = self.cache.get(key)
            if entry is None or entry.document is not document:
                entry = None  # not this document's entry (or none): validate without keeping
            errors = entry.validations.get(rules) if entry is not None else None
            if errors is None:
                errors = validate(context.schema._schema, document, rules, hide_suggestions=self.hide_suggestions)
                if entry is not None:
                    entry.validations[rules] = errors
                    entry.cost += errors_cost(errors)
                    self.cache.put(key, entry)  # re-accounted, or dropped when now too large
            # A copy: the result's error list is the request's own.
            context.pre_execution_errors = list(errors)

    # The hooks, for Strawberry's own runner (``LimitsRunner`` calls the steps directly).

    def on_operation(self) -> Iterator[None]:
        self.start()
        yield

    def on_parse(self) -> Iterator[None]:
        self.parse()
        yield

    def on_validate(self) -> Iterator[None]:
        self.validate()
        yield


class _Step:
    """A lifecycle step's context manager, sync and async: ``before`` on entry, nothing on exit
    (an exception passes through, as through a hook that only yields)."""

    __slots__ = ("before",)

    def __init__(self, before: Callable[[], None] | None = None) -> None:
        self.before = before

    def __enter__(self) -> None:
        if self.before is not None:
            self.before()

    def __exit__(self, *exc_info: object) -> None:
        return None

    async def __aenter__(self) -> None:
        if self.before is not None:
            self.before()

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_NO_STEP = _Step()


class LimitsRunner(SchemaExtensionsRunner):
    """Strawberry's extension runner for an operation whose only extension is ``RequestLimits``:
    it calls the extension's steps directly.

    Strawberry's runner builds, for every operation and every lifecycle step, a context manager
    that looks each hook up again (``getattr``, ``inspect.isgeneratorfunction``), wraps it in
    ``contextlib.contextmanager`` and enters it through an ``ExitStack``: about a tenth of the
    CPU of a cached ``me`` query. The steps here run at the same points, with the same effect.
    """

    def __init__(self, execution_context: ExecutionContext, limits: RequestLimits) -> None:
        super().__init__(execution_context, [limits])
        self.limits = limits

    def operation(self) -> _Step:  # type: ignore[override]
        return _Step(self.limits.start)

    def parsing(self) -> _Step:  # type: ignore[override]
        return _Step(self.limits.parse)

    def validation(self) -> _Step:  # type: ignore[override]
        return _Step(self.limits.validate)

    def executing(self) -> _Step:  # type: ignore[override]
        return _NO_STEP

    def on_stream_result(self, result: StreamExecutionResult) -> _Step:  # type: ignore[override]
        return _NO_STEP

    def get_extensions_results_sync(self) -> dict[str, Any]:
        return dict(self.execution_context.extensions_results)  # RequestLimits has no results of its own

    async def get_extensions_results(self, ctx: ExecutionContext) -> dict[str, Any]:
        return dict(ctx.extensions_results)


def extensions_runner(execution_context: ExecutionContext, extensions: list[SchemaExtension]) -> SchemaExtensionsRunner:
    """A ``LimitsRunner`` when ``RequestLimits`` is the operation's only extension, else
    Strawberry's own runner (any other extension, a test's included, runs as Strawberry runs it)."""
    if len(extensions) == 1 and type(extensions[0]) is RequestLimits:
        return LimitsRunner(execution_context, extensions[0])
    return SchemaExtensionsRunner(execution_context=execution_context, extensions=extensions)


class QuietExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's execution context with graphql-core's ``hide_suggestions`` on: variable
    values are coerced as execution starts, and their errors would suggest enum values."""

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> list[GraphQLError] | Executor[Any]:
        """``Executor.build``, always hiding suggestions (graphql-core passes it by keyword)."""
        return super().build(*args, **{**kwargs, "hide_suggestions": True})
