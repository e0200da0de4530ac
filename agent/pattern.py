"""A sync rule's `pattern`, searched in linear time so that no pattern can freeze the agent.

Python's `re` backtracks: `^(a+)+$` against a long name of `a`s takes time exponential in the
name's length, inside one C call that holds the GIL. While it runs, no heartbeat goes out and
SIGTERM is never handled; the lease expires, the job moves to the next machine, and freezes that
one too. A time bound cannot interrupt a C call that holds the GIL, and a third-party engine
(RE2) would be a compiled dependency in the frozen binary, so we search with our own engine:

- Syntax is exactly Python's: the pattern is parsed by the standard library's own parser
  (`re._parser`), the one `re.compile` uses.
- The parsed pattern is compiled to a small NFA program (Thompson's construction) and run as a
  set of states stepped over the text (Pike's simulation without captures, since `matches` is a
  yes/no question and greediness is irrelevant to it). Time is O(len(text) × program size),
  never more. Steps already seen are remembered (a lazily built DFA), so a typical pattern costs
  a couple of dictionary look-ups per character, and so are answers (the sync's rescans ask
  about the same paths again and again); both memos are bounded.
- What one character matches (a literal, `.`, a class, `\\d`, case folding under `(?i)`) and
  whether `\\b` or `\\B` holds at a position are asked of `re` itself, with a pattern of exactly
  one such item: it cannot backtrack, and Unicode and flag semantics stay exactly Python's.
  (`^ $ \\A \\Z`, which only look at the position and at newlines, are written out.)
- Constructs a linear engine cannot promise are refused with the reason: backreferences,
  lookahead and lookbehind, conditionals, atomic groups, possessive repeats, and programs larger
  than MAX_PROGRAM_SIZE (counted repeats expand: `(a{1000}){1000}` is a million states).

The engine runs in pure Python, so even a worst case lets other threads run between bytecodes:
heartbeats keep flowing and signals are handled. The API compiles every submitted pattern with
this module and refuses what it refuses, so a job the agent cannot evaluate is never accepted.
"""

import re
from re import _constants as sre
from re import _parser as sre_parse

MAX_PATTERN_LENGTH = 1000  # characters of pattern source
MAX_PROGRAM_SIZE = 2000  # NFA instructions after counted repeats are expanded
MAX_NESTING = 100  # groups and repeats inside one another
_CACHE_LIMIT = 200_000  # NFA states held by the memo of DFA states before it is reset
_ANSWERS_LIMIT = 100_000  # texts whose answer is remembered

# Instructions: (opcode, argument).
_CHAR, _SPLIT, _JUMP, _ASSERT, _MATCH = range(5)

# Flags that change what one character or one assertion means; the others (VERBOSE, DEBUG)
# only matter to the parser.
_SEMANTIC_FLAGS = (sre.SRE_FLAG_IGNORECASE | sre.SRE_FLAG_MULTILINE | sre.SRE_FLAG_DOTALL
                   | sre.SRE_FLAG_ASCII)

_ASSERTIONS = {
    sre.AT_BEGINNING: "^", sre.AT_BEGINNING_STRING: r"\A",
    sre.AT_END: "$", sre.AT_END_STRING: r"\Z",
    sre.AT_BOUNDARY: r"\b", sre.AT_NON_BOUNDARY: r"\B",
}
_CATEGORIES = {
    sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s", sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W",
}
_REFUSED = {
    sre.GROUPREF: r"a backreference (\1, (?P=name))",
    sre.GROUPREF_EXISTS: "a conditional (?(group)yes|no)",
    sre.ATOMIC_GROUP: "an atomic group (?>...)",
    sre.POSSESSIVE_REPEAT: "a possessive repeat (*+, ++, ?+, {m,n}+)",
}
_WHY = ("which needs a backtracking engine; patterns are searched in linear time so that none "
        "can freeze the agent")


class PatternRefused(ValueError):
    """The pattern is not valid, or not one that can be searched in linear time."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def compile_pattern(source: str) -> "Pattern":
    """The pattern, compiled for linear-time search; raises PatternRefused with the reason."""
    if not isinstance(source, str):
        raise PatternRefused("must be a string")
    if len(source) > MAX_PATTERN_LENGTH:
        raise PatternRefused(f"is longer than {MAX_PATTERN_LENGTH} characters")
    try:
        parsed = sre_parse.parse(source, 0)
    except re.error as error:
        raise PatternRefused(f"is not a valid regular expression ({error})") from None
    except (RecursionError, OverflowError):
        raise PatternRefused("is nested too deeply") from None
    return Pattern(source, _Compiler().program(parsed))


class Pattern:
    """`search(text)`: does the pattern match anywhere in text? As `re.search(...) is not None`,
    in time linear in len(text)."""

    def __init__(self, source: str, program: "_Program"):
        self.pattern = source
        self._program = program
        self._answers: dict[str, bool] = {}  # rescans ask about the same paths again and again
        self._reset_states()

    def __repr__(self) -> str:
        return f"Pattern({self.pattern!r})"

    def search(self, text: str) -> bool:
        answer = self._answers.get(text)
        if answer is None:
            answer = self._search(text)
            if len(self._answers) >= _ANSWERS_LIMIT:
                self._answers.clear()
            self._answers[text] = answer
        return answer

    def _search(self, text: str) -> bool:
        program = self._program
        state = self._start
        end = len(text)
        pos = 0
        while True:
            node = state.node
            if node is None:  # what follows depends on the anchors that hold here
                bits = program.assertion_bits(text, pos)
                node = state.by_bits.get(bits)
                if node is None:
                    node = state.by_bits[bits] = self._node(state.kernel, bits)
            if node.matched:
                return True
            if pos == end:
                return False
            char = text[pos]
            state = node.next.get(char)
            if state is None:
                state = node.next[char] = self._state(program.step(node.chars, char))
            pos += 1

    # The memo of states seen (a lazily built DFA) is bounded: patterns and texts that keep
    # producing new state sets (the worst case) fall back to plain NFA simulation instead of
    # growing it without limit. Threads share it; dict operations are atomic, two threads that
    # build the same state both build a correct one, and a search holding states from before a
    # reset finishes on them.

    def _reset_states(self) -> None:
        self._states: dict[frozenset, _DState] = {}
        self._held = 0
        self._start = self._state(frozenset())

    def _state(self, kernel: frozenset) -> "_DState":
        state = self._states.get(kernel)
        if state is None:
            self._held += len(kernel) + 1
            if self._held > _CACHE_LIMIT:
                self._reset_states()
            state = self._states[kernel] = _DState(kernel)
            state.node = self._node(kernel, None)
        return state

    def _node(self, kernel: frozenset, bits: int | None) -> "_Node | None":
        found = self._program.closure(kernel, bits)
        if found is None:
            return None
        self._held += len(found[0]) + 1
        return _Node(*found)


class _DState:
    """The states live after some characters (before following empty moves), and what they
    lead to: `node` when no anchor is in reach, else one node per combination of anchors."""

    __slots__ = ("kernel", "node", "by_bits")

    def __init__(self, kernel: frozenset):
        self.kernel = kernel
        self.node: _Node | None = None
        self.by_bits: dict[int, _Node] = {}


class _Node:
    """Every state reachable without consuming a character: those that test one (`chars`),
    whether the match state is among them, and where each character seen so far led."""

    __slots__ = ("chars", "matched", "next")

    def __init__(self, chars: frozenset, matched: bool):
        self.chars, self.matched = chars, matched
        self.next: dict[str, _DState] = {}


class _Program:
    """The NFA: instructions, and the one-item `re` patterns that test characters and
    positions."""

    def __init__(self, instructions: list, char_tests: list, assertions: list):
        self.ops = [op for op, _ in instructions]
        self.args = [arg for _, arg in instructions]
        self.char_tests = char_tests
        self.char_memo = [{} for _ in char_tests]
        self.assertions = assertions

    def assertion_bits(self, text: str, pos: int) -> int:
        bits = 0
        for index, holds in enumerate(self.assertions):
            if holds(text, pos):
                bits |= 1 << index
        return bits

    def closure(self, kernel: frozenset, bits: int | None) -> tuple[frozenset, bool] | None:
        """Every state reachable without consuming a character from the kernel and from the
        start (a search may begin at any position): the states that test a character, and
        whether the match state is among them. With bits None, None if an anchor is in reach
        (the answer then depends on which anchors hold)."""
        ops, args = self.ops, self.args
        seen = set()
        stack = [0, *kernel]
        chars = []
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            op = ops[pc]
            if op == _CHAR:
                chars.append(pc)
            elif op == _SPLIT:
                stack.extend(args[pc])
            elif op == _JUMP:
                stack.append(args[pc])
            elif op == _ASSERT:
                if bits is None:
                    return None
                if bits >> args[pc] & 1:
                    stack.append(pc + 1)
            else:  # _MATCH
                return frozenset(chars), True
        return frozenset(chars), False

    def step(self, chars: frozenset, char: str) -> frozenset:
        """The kernel after `char`: the successor of every state whose test it passes."""
        args, tests, memo = self.args, self.char_tests, self.char_memo
        following = []
        for pc in chars:
            index = args[pc]
            passed = memo[index].get(char)
            if passed is None:
                passed = memo[index][char] = tests[index].fullmatch(char) is not None
            if passed:
                following.append(pc + 1)
        return frozenset(following)


def _assertion(source: str, flags: int):
    """Whether an anchor holds at a position of a text. The anchors that look only at the
    position and at newlines are written out (they are tested at nearly every character of a
    pattern that starts with `^`); `\\b` and `\\B`, which depend on what a word character is,
    ask `re` (`match(text, pos)` sees the character before pos)."""
    multiline = flags & sre.SRE_FLAG_MULTILINE
    if source == r"\A" or (source == "^" and not multiline):
        return lambda text, pos: pos == 0
    if source == "^":
        return lambda text, pos: pos == 0 or text[pos - 1] == "\n"
    if source == r"\Z":
        return lambda text, pos: pos == len(text)
    if source == "$" and not multiline:
        return lambda text, pos: pos == len(text) or (pos == len(text) - 1 and text[pos] == "\n")
    if source == "$":
        return lambda text, pos: pos == len(text) or text[pos] == "\n"
    compiled = re.compile(source, flags)
    return lambda text, pos: compiled.match(text, pos) is not None


def _char(code: int) -> str:
    """A code point written so that it means itself anywhere in a pattern, classes included."""
    return f"\\U{code:08x}"


class _Compiler:
    """Parsed pattern → _Program (Thompson's construction)."""

    def __init__(self):
        self.instructions: list = []
        self.char_tests: list = []
        self.assertions: list = []
        self._test_index: dict = {}
        self._assertion_index: dict = {}
        self._depth = 0

    def program(self, parsed) -> _Program:
        self._items(parsed.data, parsed.state.flags)
        self._emit(_MATCH, None)
        return _Program(self.instructions, self.char_tests, self.assertions)

    def _emit(self, op: int, arg) -> int:
        if len(self.instructions) >= MAX_PROGRAM_SIZE:
            raise PatternRefused(
                f"is too large to evaluate: more than {MAX_PROGRAM_SIZE} states once counted "
                "repeats are expanded (write {m,n} with smaller counts, or use * and +)")
        self.instructions.append((op, arg))
        return len(self.instructions) - 1

    def _patch(self, at: int, arg) -> None:
        self.instructions[at] = (self.instructions[at][0], arg)

    def _here(self) -> int:
        return len(self.instructions)

    def _one(self, kind: int, source: str, flags: int) -> int:
        """The index of a character test (a one-item `re` pattern) or of an assertion (a
        function of text and position)."""
        flags &= _SEMANTIC_FLAGS
        index_of, made = ((self._test_index, self.char_tests) if kind == _CHAR
                          else (self._assertion_index, self.assertions))
        key = (source, flags)
        if key not in index_of:
            index_of[key] = len(made)
            made.append(re.compile(source, flags) if kind == _CHAR
                        else _assertion(source, flags))
        return index_of[key]

    def _items(self, items, flags: int) -> None:
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise PatternRefused(f"is nested more than {MAX_NESTING} levels deep")
        for op, av in items:
            self._item(op, av, flags)
        self._depth -= 1

    def _item(self, op, av, flags: int) -> None:
        if op is sre.LITERAL:
            self._emit(_CHAR, self._one(_CHAR, _char(av), flags))
        elif op is sre.NOT_LITERAL:
            self._emit(_CHAR, self._one(_CHAR, f"[^{_char(av)}]", flags))
        elif op is sre.ANY:
            self._emit(_CHAR, self._one(_CHAR, ".", flags))
        elif op is sre.IN:
            self._emit(_CHAR, self._one(_CHAR, self._class(av), flags))
        elif op is sre.AT:
            if av not in _ASSERTIONS:
                raise PatternRefused(f"uses an unsupported anchor ({av})")
            self._emit(_ASSERT, self._one(_ASSERT, _ASSERTIONS[av], flags))
        elif op is sre.SUBPATTERN:
            _group, add_flags, del_flags, body = av
            self._items(body, _scoped_flags(flags, add_flags, del_flags))
        elif op is sre.BRANCH:
            self._branch(av[1], flags)
        elif op is sre.MAX_REPEAT or op is sre.MIN_REPEAT:
            # Lazy and greedy repeats match the same texts; only which match is reported
            # differs, and a yes/no search does not report one.
            self._repeat(*av, flags)
        elif op is sre.ASSERT or op is sre.ASSERT_NOT:
            kind = "a lookahead (?=...) (?!...)" if av[0] >= 0 else "a lookbehind (?<=...) (?<!...)"
            raise PatternRefused(f"uses {kind}, {_WHY}")
        elif op in _REFUSED:
            raise PatternRefused(f"uses {_REFUSED[op]}, {_WHY}")
        else:
            raise PatternRefused(f"uses an unsupported construct ({op})")

    def _class(self, members) -> str:
        parts = []
        for op, av in members:
            if op is sre.NEGATE:
                parts.append("^")
            elif op is sre.LITERAL:
                parts.append(_char(av))
            elif op is sre.RANGE:
                parts.append(f"{_char(av[0])}-{_char(av[1])}")
            elif op is sre.CATEGORY and av in _CATEGORIES:
                parts.append(_CATEGORIES[av])
            else:
                raise PatternRefused(f"uses an unsupported character class item ({op})")
        return "[" + "".join(parts) + "]"

    def _branch(self, alternatives, flags: int) -> None:
        # SPLIT(first, next split) for all but the last; each alternative jumps to the end.
        jumps = []
        for number, alternative in enumerate(alternatives):
            last = number == len(alternatives) - 1
            split = None if last else self._emit(_SPLIT, None)
            self._items(alternative, flags)
            if not last:
                jumps.append(self._emit(_JUMP, None))
                self._patch(split, (split + 1, self._here()))
        for jump in jumps:
            self._patch(jump, self._here())

    def _repeat(self, low: int, high: int, body, flags: int) -> None:
        for _ in range(low):
            self._items(body, flags)
        if high == sre.MAXREPEAT:
            loop = self._emit(_SPLIT, None)
            self._items(body, flags)
            self._emit(_JUMP, loop)
            self._patch(loop, (loop + 1, self._here()))
            return
        optional = []
        for _ in range(high - low):
            optional.append(self._emit(_SPLIT, None))
            self._items(body, flags)
        for split in optional:
            self._patch(split, (split + 1, self._here()))


def _scoped_flags(flags: int, add: int, remove: int) -> int:
    """Flags inside `(?flags-flags:...)`. ASCII and UNICODE exclude each other."""
    flags = (flags | add) & ~remove
    if add & sre.SRE_FLAG_ASCII:
        flags &= ~sre.SRE_FLAG_UNICODE
    if add & sre.SRE_FLAG_UNICODE:
        flags &= ~sre.SRE_FLAG_ASCII
    return flags
