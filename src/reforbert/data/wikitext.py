"""Turning Wikipedia text into clean paragraphs: pure functions, no I/O.

Two kinds of input reach these functions:

* raw wikitext from a MediaWiki XML dump (``wikitext_to_paragraphs``), which still has templates,
  references, tables, links, quotes and headings;
* WikiExtractor output (``extracted_to_paragraphs``), which is already plain text but keeps
  leftovers: ``formula_N``/``codice_N`` placeholders, parentheses emptied by removed templates,
  a few ``[[links]]``, HTML tags and entities, and section headings as bare lines.

Both end in the same inline clean-up so the two sources give text of the same style: one
paragraph per line, no markup, no headings.

Headings are dropped rather than kept as bare lines: they are not sentences, and a heading
followed by its own section would make a trivially easy "next sentence" pair for pretraining.
"""

from __future__ import annotations

import html
import re

# Namespaces whose links are not running text (media and categories), in Korean and English.
_DROPPED_LINK_NAMESPACES = frozenset({"파일", "그림", "분류", "미디어", "file", "image", "category", "media"})
# `[[en:Foo]]`, `[[zh-yue:Foo]]`: links to the same article in other languages.
_INTERLANGUAGE = re.compile(r"^[a-z]{2,3}(?:-[a-z]+)*:")

# Sections that hold lists of links and sources rather than prose; dropped with their content.
_BOILERPLATE_SECTIONS = frozenset(
    {
        "같이 보기",
        "관련 항목",
        "각주",
        "주석",
        "출처",
        "참고 문헌",
        "참고문헌",
        "참고 자료",
        "각주 및 참고 문헌",
        "외부 링크",
        "바깥 고리",
        "읽을거리",
        "see also",
        "references",
        "notes",
        "external links",
        "further reading",
        "bibliography",
    }
)

# Extension tags whose content is code, markup or media, never prose.
_OPAQUE_TAGS = (
    "math",
    "syntaxhighlight",
    "source",
    "code",
    "pre",
    "gallery",
    "timeline",
    "score",
    "graph",
    "mapframe",
    "maplink",
    "templatedata",
    "imagemap",
    "references",
    "hiero",
    "inputbox",
    "categorytree",
)

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_REF_SELF_CLOSING = re.compile(r"<ref\b[^<>]*/\s*>", re.IGNORECASE)
_REF_PAIR = re.compile(r"<ref\b[^<>]*>.*?</ref\s*>", re.IGNORECASE | re.DOTALL)
_OPAQUE_PAIR = re.compile(
    r"<(" + "|".join(_OPAQUE_TAGS) + r")\b[^<>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL
)
_OPAQUE_SELF_CLOSING = re.compile(r"<(?:" + "|".join(_OPAQUE_TAGS) + r")\b[^<>]*/\s*>", re.IGNORECASE)
# Innermost constructs: no opening or closing delimiter inside, so repeated passes peel nesting.
_INNERMOST_TEMPLATE = re.compile(r"\{\{(?:(?!\{\{|\}\})[\s\S])*\}\}")
_INNERMOST_TABLE = re.compile(r"\{\|(?:(?!\{\||\|\})[\s\S])*\|\}")
_INNERMOST_LINK = re.compile(r"\[\[((?:(?!\[\[|\]\])[\s\S])*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*(?:\s+([^\]]*))?\]", re.IGNORECASE)
_BOLD_ITALIC = re.compile(r"'{2,}")
_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_LIST_MARKER = re.compile(r"^[*#:;]+\s*")
_LINE_BREAK_TAG = re.compile(r"<br\s*[^<>]*>", re.IGNORECASE)
# Only formatting and MediaWiki tags: prose uses angle brackets for titles (<The Wall>, <Isola>) and
# articles about HTML or C++ quote <html> or vector<int>; those stay.
_MARKUP_TAG_NAMES = (
    "br",
    "p",
    "div",
    "span",
    "small",
    "big",
    "sup",
    "sub",
    "b",
    "i",
    "u",
    "s",
    "del",
    "ins",
    "strike",
    "center",
    "font",
    "blockquote",
    "em",
    "strong",
    "abbr",
    "cite",
    "q",
    "mark",
    "var",
    "kbd",
    "samp",
    "tt",
    "bdi",
    "wbr",
    "hr",
    "ruby",
    "rb",
    "rt",
    "rp",
    "ul",
    "ol",
    "li",
    "dl",
    "dt",
    "dd",
    "table",
    "tr",
    "td",
    "th",
    "caption",
    "nowiki",
    "onlyinclude",
    "includeonly",
    "noinclude",
    "poem",
    "ref",
    "references",
    "chem",
    "ce",
    "math",
    "score",
    "mapframe",
    "maplink",
    "graph",
    "section",
    "code",
    "pre",
    "syntaxhighlight",
    "source",
    "gallery",
    "templatestyles",
    "timeline",
    "hiero",
    "categorytree",
)
_HTML_TAG = re.compile(r"</?(?:" + "|".join(_MARKUP_TAG_NAMES) + r")(?:\s[^<>]*)?/?>", re.IGNORECASE)
# No `\b` after the digits: a Korean particle often follows directly (`formula_5인`).
_PLACEHOLDER = re.compile(r"(?:formula|codice)_\d+")
_STRAY_BRACKETS = re.compile(r"\[\[|\]\]|\{\{|\}\}|\{\||\|\}")
# `(, 1924년 ~ )` -> `(1924년 ~ )`, `(數學, )` -> `(數學)`; separators are what removed templates leave.
_LEADING_SEPARATORS = re.compile(r"\(\s*(?:[,;、]\s*)+")
_TRAILING_SEPARATORS = re.compile(r"(?:\s*[,;、])+\s*\)")
_EMPTY_PARENTHESES = re.compile(r"\s*\(\s*\)")
_SPACES = re.compile(r"[ \t\u00a0\u200b\u3000]+")
HEADING_MAX_CHARS = 40


def remove_nested(text: str, innermost: re.Pattern[str]) -> str:
    """Remove a nestable construct by peeling innermost occurrences until none is left."""
    while True:
        text, count = innermost.subn("", text)
        if count == 0:
            return text


def _render_link(match: re.Match[str]) -> str:
    """`[[a|b]]` -> b, `[[a]]` -> a, media/category/interlanguage links -> nothing."""
    inner = match.group(1)
    target, _, label = inner.partition("|")
    target = target.strip()
    if target.startswith(":"):  # `[[:분류:X]]` is a visible link to the page itself
        target = target[1:]
    else:
        namespace, colon, _ = target.partition(":")
        if colon and namespace.strip().lower() in _DROPPED_LINK_NAMESPACES:
            return ""
        if _INTERLANGUAGE.match(target):
            return ""
    return label if label else target


def replace_links(text: str) -> str:
    """Replace internal links by their visible text; nested links in captions go first."""
    while True:
        text, count = _INNERMOST_LINK.subn(_render_link, text)
        if count == 0:
            return text


def fix_parentheses(text: str) -> str:
    """Tidy parentheses that lost their content when templates were removed."""
    text = _LEADING_SEPARATORS.sub("(", text)
    text = _TRAILING_SEPARATORS.sub(")", text)
    return _EMPTY_PARENTHESES.sub("", text)


def clean_inline(line: str) -> str:
    """Markup that can survive inside one line in both sources, removed; spaces normalised."""
    line = _LINE_BREAK_TAG.sub(" ", line)
    line = _HTML_TAG.sub("", line)
    line = replace_links(line)
    line = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", line)
    line = html.unescape(line)
    line = _PLACEHOLDER.sub("", line)
    line = _STRAY_BRACKETS.sub("", line)
    line = _SPACES.sub(" ", line)
    line = fix_parentheses(line)
    return _SPACES.sub(" ", line).strip()


def _remove_block_markup(wikitext: str) -> str:
    """Markup that spans lines: comments, references, code/math, templates, tables."""
    text = _COMMENT.sub("", wikitext)
    text = _REF_SELF_CLOSING.sub("", text)
    text = _REF_PAIR.sub("", text)
    text = _OPAQUE_SELF_CLOSING.sub("", text)
    text = _OPAQUE_PAIR.sub("", text)
    text = remove_nested(text, _INNERMOST_TEMPLATE)
    text = remove_nested(text, _INNERMOST_TABLE)
    # Media links can span lines (gallery-like captions); resolve links before splitting lines.
    return replace_links(text)


def wikitext_to_paragraphs(wikitext: str) -> list[str]:
    """Raw article wikitext -> clean paragraphs (one per source line, headings dropped)."""
    text = _remove_block_markup(wikitext)
    text = _MAGIC_WORD.sub("", text)
    text = _BOLD_ITALIC.sub("", text)
    paragraphs: list[str] = []
    skipping_level = 0  # heading level of the boilerplate section being skipped; 0 = not skipping
    for raw_line in text.split("\n"):
        heading = _HEADING.match(raw_line.strip())
        if heading:
            level = len(heading.group(1))
            if skipping_level and level > skipping_level:
                continue  # a subsection of a skipped section
            title = clean_inline(heading.group(2)).lower()
            skipping_level = level if title in _BOILERPLATE_SECTIONS else 0
            continue
        if skipping_level:
            continue
        stripped = raw_line.strip()
        if stripped.startswith(("|", "!")):  # rows of a table whose `{|` was unbalanced
            continue
        line = clean_inline(_LIST_MARKER.sub("", stripped))
        if line:
            paragraphs.append(line)
    return paragraphs


def looks_like_heading(line: str) -> bool:
    """A short line ending in a letter or digit: a section heading WikiExtractor left as a bare line.

    Sentences, and lines that continue into the next one, end in punctuation ("다.", ",", ")").
    """
    return len(line) <= HEADING_MAX_CHARS and line[-1].isalnum()


def extracted_to_paragraphs(text: str) -> list[str]:
    """WikiExtractor article body -> clean paragraphs, leftovers and heading lines dropped."""
    text = _COMMENT.sub("", text)
    text = _REF_SELF_CLOSING.sub("", text)
    text = _REF_PAIR.sub("", text)
    text = _OPAQUE_PAIR.sub("", text)
    paragraphs: list[str] = []
    for raw_line in text.split("\n"):
        line = clean_inline(raw_line)
        if line and not looks_like_heading(line):
            paragraphs.append(line)
    return paragraphs
