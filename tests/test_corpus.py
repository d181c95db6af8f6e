"""`reforbert corpus`: cleaning, readers, bad inputs, the CLI and the resumable download."""

from __future__ import annotations

import bz2
import hashlib
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from reforbert.cli import main
from reforbert.data import corpus as corpus_module
from reforbert.data.corpus import build_corpus
from reforbert.data.wiki_sources import download_dump, iter_dump_pages
from reforbert.data.wikitext import clean_inline, fix_parentheses, replace_links, wikitext_to_paragraphs
from reforbert.errors import ReforBertInputError

MIN_CHARS = 25  # the tiny articles below are short; real runs use the default (200)

CARTER_WIKITEXT = """{{위키데이터 속성 추적|{{#if:x|{{y}}}}}}
{{정보상자 사람
| 이름 = 지미 카터
| 출생 = {{출생일|1924|10|1}}
}}
'''제임스 얼 "지미" 카터 주니어'''({{lang|en|James Earl "Jimmy" Carter Jr.}}, [[1924년]] [[10월 1일]] ~ )는 \
[[민주당 (미국)|민주당]] 출신 미국 39번째 [[미국의 대통령|대통령]]이다.<ref name="a">{{웹 인용|url=http://x.org}}</ref>

== 생애 ==
[[파일:JimmyCarter.jpg|섬네일|[[조지아주]]의 카터]]
지미 카터는 [[조지아주]] [[섬터 카운티]]에서 태어났다.<ref>출처</ref> \
''해군''에 들어가 일하였다.<ref name="b" />
{| class="wikitable"
|-
! 연도 !! 직책
|-
| 1977 || 대통령 {{깃발|미국}}
|}
그의 별명은 [https://example.org 땅콩 농부]였으며,<br />AT&amp;T<!-- 숨은 주석 --> 회사와 무관하다.
[[분류:미국의 대통령]][[Category:1924년 태어남]][[en:Jimmy Carter]][[그림:Carter.png|작은]]

=== 대통령 임기 ===
* 1977년에 [[취임]]하였다.

== 각주 ==
{{각주}}
* [http://example.com 참고 자료]
"""

SEOUL_WIKITEXT = "'''서울특별시'''(, )는 [[대한민국]]의 [[수도]]이다.<ref>x</ref> 인구는 약 1000만 명이다.\n"

EXPECTED_DUMP_TEXT = """지미 카터
제임스 얼 "지미" 카터 주니어(1924년 10월 1일 ~ )는 민주당 출신 미국 39번째 대통령이다.
지미 카터는 조지아주 섬터 카운티에서 태어났다. 해군에 들어가 일하였다.
그의 별명은 땅콩 농부였으며, AT&T 회사와 무관하다.
1977년에 취임하였다.

서울
서울특별시는 대한민국의 수도이다. 인구는 약 1000만 명이다.
"""


def page(title: str, text: str, namespace: int = 0, redirect: str | None = None) -> str:
    redirect_element = f'<redirect title="{escape(redirect)}" />' if redirect else ""
    return (
        f"<page><title>{escape(title)}</title><ns>{namespace}</ns><id>1</id>{redirect_element}"
        f'<revision><id>2</id><text xml:space="preserve">{escape(text)}</text></revision></page>\n'
    )


def dump_xml(*pages: str) -> str:
    return (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="ko">\n'
        "<siteinfo><sitename>위키백과</sitename></siteinfo>\n" + "".join(pages) + "</mediawiki>\n"
    )


SAMPLE_DUMP = dump_xml(
    page("지미 카터", CARTER_WIKITEXT),
    page("카터", "#넘겨주기 [[지미 카터]]", redirect="지미 카터"),
    page("토론:지미 카터", "이 문서는 토론 문서이므로 기사 본문이 아닙니다. " * 3, namespace=1),
    page("Carter", "#REDIRECT [[지미 카터]]"),
    page("짧은 문서", "짧은 문서이다."),
    page("서울", SEOUL_WIKITEXT),
)


def write_dump(folder: Path, compressed: bool) -> Path:
    data = SAMPLE_DUMP.encode("utf-8")
    if compressed:
        path = folder / "kowiki-test-pages-articles.xml.bz2"
        path.write_bytes(bz2.compress(data))
    else:
        path = folder / "kowiki-test-pages-articles.xml"
        path.write_bytes(data)
    return path


CARTER_EXTRACTED = """<doc id="5" url="https://ko.wikipedia.org/wiki?curid=5" title="지미 카터">
지미 카터

제임스 얼 "지미" 카터 주니어(, 1924년 10월 1일 ~ )는 민주당 출신 미국 39번째 대통령 (1977년 ~ 1981년)이다.

생애

힘의 세기가 formula_5인 경우를 정의했다.<br>명령어 codice_2는 [[백그라운드]]에서 \
[[작업 (컴퓨팅)|작업]]을 실행한다.
이름()은 &quot;카터&quot;(, , )이다. 한자(數學, )도 있다.
</doc>
"""

EXPECTED_EXTRACTED_TEXT = """지미 카터
제임스 얼 "지미" 카터 주니어(1924년 10월 1일 ~ )는 민주당 출신 미국 39번째 대통령 (1977년 ~ 1981년)이다.
힘의 세기가 인 경우를 정의했다. 명령어 는 백그라운드에서 작업을 실행한다.
이름은 "카터"이다. 한자(數學)도 있다.

한국어
한국어는 대한민국과 조선민주주의인민공화국의 공용어이다.
"""


def write_extracted_folder(folder: Path) -> Path:
    root = folder / "extracted"
    (root / "AA").mkdir(parents=True)
    (root / "AA" / "wiki_00").write_text(
        CARTER_EXTRACTED
        + '<doc id="7" url="https://ko.wikipedia.org/wiki?curid=7" title="스텁">\n'
        + "스텁\n\n짧은 글이다.\n</doc>\n",
        encoding="utf-8",
    )
    duplicate = CARTER_EXTRACTED.replace('id="5"', 'id="8"').replace("지미 카터", "카터 사본", 2)
    korean = (
        '<doc id="9" url="https://ko.wikipedia.org/wiki?curid=9" title="한국어">\n한국어\n\n'
        "한국어는 대한민국과 조선민주주의인민공화국의 공용어이다.\n</doc>\n"
    )
    (root / "AA" / "wiki_01").write_text(duplicate + korean, encoding="utf-8")
    (root / "README.md").write_text("not an extracted file\n", encoding="utf-8")
    return root


def no_output_left(output: Path) -> bool:
    """Neither the output nor a temporary file beside it."""
    temporary = [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]
    return not output.exists() and not temporary


# --- cleaning ------------------------------------------------------------------------------------


def test_links_and_parentheses() -> None:
    assert replace_links("[[a|b]] [[c]]의 [[파일:x.png|섬네일|[[d]] 캡션]][[:분류:고양이|고양이 분류]]") == (
        "b c의 고양이 분류"
    )
    assert fix_parentheses("주니어(, 1924년 ~ )는 () 이름(, ) 한자(數學, ) x(,)") == (
        "주니어(1924년 ~ )는 이름 한자(數學) x"
    )


def test_only_markup_tags_are_removed() -> None:
    line = '가<br>나<BR />다 <small>작게</small> 《<The Wall>》 vector<int> <span style="x">끝</span>'
    assert clean_inline(line) == "가 나 다 작게 《<The Wall>》 vector<int> 끝"


def test_boilerplate_section_skips_its_subsections() -> None:
    text = "본문이다.\n== 외부 링크 ==\n* 링크\n=== 하위 ===\n목록\n== 역사 ==\n역사이다."
    assert wikitext_to_paragraphs(text) == ["본문이다.", "역사이다."]


@pytest.mark.parametrize("compressed", [False, True], ids=["xml", "xml.bz2"])
def test_dump_to_exact_text(tmp_path: Path, compressed: bool) -> None:
    dump = write_dump(tmp_path, compressed)
    output = tmp_path / "corpus.txt"
    stats = build_corpus([dump], output, min_chars=MIN_CHARS, workers=1, show_progress=False)
    assert output.read_bytes().decode("utf-8") == EXPECTED_DUMP_TEXT
    assert stats.documents_kept == 2
    assert dict(stats.dropped) == {"redirect": 2, "non-article namespace": 1, "shorter than min-chars": 1}
    assert stats.characters_kept == sum(len(line) for line in EXPECTED_DUMP_TEXT.splitlines()[1:5]) + len(
        EXPECTED_DUMP_TEXT.splitlines()[7]
    )


def test_dump_reader_yields_only_articles(tmp_path: Path) -> None:
    titles = [title for title, _ in iter_dump_pages(write_dump(tmp_path, compressed=False))]
    assert titles == ["지미 카터", "짧은 문서", "서울"]


def test_extracted_folder_to_exact_text(tmp_path: Path) -> None:
    folder = write_extracted_folder(tmp_path)
    output = tmp_path / "corpus.txt"
    stats = build_corpus([folder], output, min_chars=MIN_CHARS, workers=1, show_progress=False)
    assert output.read_text(encoding="utf-8") == EXPECTED_EXTRACTED_TEXT
    assert stats.documents_read == 4
    assert dict(stats.dropped) == {"shorter than min-chars": 1, "duplicate body": 1}


def test_output_does_not_depend_on_worker_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_module, "BATCH_SIZE", 1)  # several batches in flight at once
    folder = write_extracted_folder(tmp_path)
    dump = write_dump(tmp_path, compressed=False)
    settings = {"min_chars": MIN_CHARS, "show_progress": False}
    one = build_corpus([folder, dump], tmp_path / "one.txt", workers=1, **settings)
    two = build_corpus([folder, dump], tmp_path / "two.txt", workers=2, **settings)
    text = (tmp_path / "two.txt").read_text(encoding="utf-8")
    assert (tmp_path / "one.txt").read_text(encoding="utf-8") == text
    assert text == EXPECTED_EXTRACTED_TEXT + "\n" + EXPECTED_DUMP_TEXT
    assert (one.documents_kept, one.characters_kept, one.dropped) == (
        two.documents_kept,
        two.characters_kept,
        two.dropped,
    )


# --- bad input -----------------------------------------------------------------------------------


def test_missing_input(tmp_path: Path) -> None:
    output = tmp_path / "corpus.txt"
    with pytest.raises(ReforBertInputError, match=re.escape(f"{tmp_path / 'nope.xml'}: no such file")):
        build_corpus([tmp_path / "nope.xml"], output, show_progress=False)
    assert no_output_left(output)


def test_empty_corpus_is_refused(tmp_path: Path) -> None:
    dump = tmp_path / "stubs.xml"
    stub, talk = page("짧은 문서", "짧다."), page("토론:x", "토론", namespace=1)
    dump.write_text(dump_xml(stub, talk), encoding="utf-8")
    output = tmp_path / "corpus.txt"
    with pytest.raises(ReforBertInputError) as error:
        build_corpus([dump], output, workers=1, show_progress=False)
    message = str(error.value)
    assert message.startswith(f"{dump}: nothing kept") and "non-article namespace: 1" in message
    assert "\n" not in message
    assert no_output_left(output)


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "text" / "AA"
    folder.mkdir(parents=True)
    bad = folder / "wiki_00"
    document = '<doc id="1" url="u" title="가">\n가\n본문 \0 이다.\n</doc>\n'.encode()
    bad.write_bytes(document.replace(b"\0", b"\xff"))  # 0xFF never occurs in UTF-8
    output = tmp_path / "corpus.txt"
    with pytest.raises(ReforBertInputError, match=re.escape(f"{bad}:3: invalid UTF-8")):
        build_corpus([folder.parent], output, workers=1, show_progress=False)
    assert no_output_left(output)


def test_invalid_utf8_in_dump_names_line(tmp_path: Path) -> None:
    dump = tmp_path / "bad.xml"
    dump.write_bytes(SAMPLE_DUMP.encode().replace("서울특별시".encode(), b"\xff\xfe", 1))
    line = SAMPLE_DUMP[: SAMPLE_DUMP.index("서울특별시")].count("\n") + 1
    with pytest.raises(ReforBertInputError, match=re.escape(f"{dump}:{line}: not valid XML")):
        build_corpus([dump], tmp_path / "corpus.txt", workers=1, show_progress=False)
    assert no_output_left(tmp_path / "corpus.txt")


def test_truncated_bz2_names_byte_offset(tmp_path: Path) -> None:
    full = bz2.compress(SAMPLE_DUMP.encode("utf-8"))
    dump = tmp_path / "cut.xml.bz2"
    dump.write_bytes(full[: len(full) // 2])
    expected = re.escape(f"{dump}: truncated bz2 file") + ".*at byte [0-9]+"
    with pytest.raises(ReforBertInputError, match=expected):
        build_corpus([dump], tmp_path / "corpus.txt", workers=1, show_progress=False)
    assert no_output_left(tmp_path / "corpus.txt")


def test_dump_without_pages(tmp_path: Path) -> None:
    dump = tmp_path / "empty.xml"
    dump.write_text(dump_xml(), encoding="utf-8")
    with pytest.raises(ReforBertInputError, match=re.escape(f"{dump}: the dump has no <page> elements")):
        build_corpus([dump], tmp_path / "corpus.txt", workers=1, show_progress=False)
    assert no_output_left(tmp_path / "corpus.txt")


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("notes.xml", "이것은 XML이 아니다\n", ":1: not valid XML"),
        ("feed.xml", "<rss><channel/></rss>", ": not a MediaWiki dump"),
        ("notes.txt", "그냥 글\n", ": not a MediaWiki XML dump"),
    ],
)
def test_not_a_dump(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ReforBertInputError, match=re.escape(f"{path}{expected}")):
        build_corpus([path], tmp_path / "corpus.txt", workers=1, show_progress=False)
    assert no_output_left(tmp_path / "corpus.txt")


def test_unclosed_doc_is_reported(tmp_path: Path) -> None:
    file = tmp_path / "wiki_00"
    file.write_text('<doc id="1" url="u" title="가">\n가\n본문이다.\n', encoding="utf-8")
    with pytest.raises(ReforBertInputError, match=re.escape(f"{file}:3: the file ends inside")):
        build_corpus([file], tmp_path / "corpus.txt", workers=1, show_progress=False)


def test_existing_output_is_refused(tmp_path: Path) -> None:
    folder = write_extracted_folder(tmp_path)
    output = tmp_path / "corpus.txt"
    output.write_text("사용자의 파일\n", encoding="utf-8")
    with pytest.raises(ReforBertInputError, match="already exists"):
        build_corpus([folder], output, min_chars=MIN_CHARS, workers=1, show_progress=False)
    assert output.read_text(encoding="utf-8") == "사용자의 파일\n"
    build_corpus([folder], output, min_chars=MIN_CHARS, workers=1, overwrite=True, show_progress=False)
    assert output.read_text(encoding="utf-8") == EXPECTED_EXTRACTED_TEXT


def test_cli_success_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_extracted_folder(tmp_path)
    output = tmp_path / "corpus.txt"
    argv = ["corpus", str(folder), "-o", str(output), "--min-chars", str(MIN_CHARS), "--workers", "1"]
    assert main(argv) == 0
    assert output.read_text(encoding="utf-8") == EXPECTED_EXTRACTED_TEXT
    assert "duplicate body: 1" in capsys.readouterr().out

    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"reforbert corpus: error: {output}: already exists; pass --overwrite to replace it"
    )
    missing = tmp_path / "missing.xml.bz2"
    assert main(["corpus", str(missing), "-o", str(tmp_path / "other.txt")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{missing}: no such file" in error


# --- download ------------------------------------------------------------------------------------


class RangeServer(ThreadingHTTPServer):
    """Serves ``payload`` at /dump.xml.bz2 (with Range support) and a sha1sums list at /sha1sums.txt."""

    payload = b""
    cut_after: int | None = None  # send only this many bytes of a full response, then hang up
    requests: list[str | None]


class RangeHandler(BaseHTTPRequestHandler):
    server: RangeServer

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        if self.path == "/sha1sums.txt":
            body = f"{hashlib.sha1(self.server.payload).hexdigest()}  dump.xml.bz2\n".encode()
            return self._send(200, body)
        if self.path != "/dump.xml.bz2":
            return self._send(404, b"")
        data = self.server.payload
        requested = self.headers.get("Range")
        self.server.requests.append(requested)
        if requested is None:
            return self._send(200, data)
        start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
        if start >= len(data):
            return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        return self._send(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cut_after
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def server():
    httpd = RangeServer(("127.0.0.1", 0), RangeHandler)
    httpd.payload = bz2.compress(SAMPLE_DUMP.encode("utf-8"))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def dump_url(server: RangeServer, name: str = "dump.xml.bz2") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def test_download_resumes_a_partial_file(tmp_path: Path, server: RangeServer) -> None:
    destination = tmp_path / "dump.xml.bz2"
    partial = tmp_path / "dump.xml.bz2.part"
    partial.write_bytes(server.payload[:100])
    sha1 = hashlib.sha1(server.payload).hexdigest()
    download_dump(dump_url(server), destination, sha1=sha1, show_progress=False)
    assert destination.read_bytes() == server.payload
    assert server.requests == ["bytes=100-"]
    assert not partial.exists()


def test_interrupted_download_resumes_on_the_next_run(tmp_path: Path, server: RangeServer) -> None:
    destination = tmp_path / "dump.xml.bz2"
    server.cut_after = 300
    checksums = dump_url(server, "sha1sums.txt")
    with pytest.raises(ReforBertInputError, match="run again to resume"):
        download_dump(dump_url(server), destination, checksums_url=checksums, show_progress=False)
    assert not destination.exists()
    assert (tmp_path / "dump.xml.bz2.part").stat().st_size == 300
    server.cut_after = None
    download_dump(dump_url(server), destination, checksums_url=checksums, show_progress=False)
    assert destination.read_bytes() == server.payload
    assert server.requests == [None, "bytes=300-"]


def test_download_checksum_mismatch_keeps_nothing(tmp_path: Path, server: RangeServer) -> None:
    destination = tmp_path / "dump.xml.bz2"
    expected = re.escape(f"{destination}: md5 checksum mismatch: expected 0000")
    with pytest.raises(ReforBertInputError, match=expected):
        download_dump(dump_url(server), destination, md5="0" * 32, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_checksum_mismatch_is_kept_only_when_accepted(tmp_path, server, capsys) -> None:
    destination = tmp_path / "dump.xml.bz2"
    actual = hashlib.md5(server.payload).hexdigest()
    download_dump(dump_url(server), destination, md5="0" * 32, accept_mismatch=True, show_progress=False)
    assert destination.read_bytes() == server.payload
    warning = capsys.readouterr().err
    assert f"{destination}: md5 checksum mismatch: expected {'0' * 32}, got {actual}" in warning
    # An existing file that does not match is refused too, and left where it is.
    with pytest.raises(ReforBertInputError, match=f"got {actual}; pass --accept-checksum-mismatch"):
        download_dump(dump_url(server), destination, md5="1" * 32, show_progress=False)
    assert destination.read_bytes() == server.payload


def test_download_without_a_known_checksum_needs_permission(tmp_path, server, capsys) -> None:
    destination = tmp_path / "dump.xml.bz2"
    with pytest.raises(ReforBertInputError, match="no checksum known for this download.*--allow-unverified"):
        download_dump(dump_url(server), destination, show_progress=False)
    assert server.requests == [] and list(tmp_path.iterdir()) == []  # refused before fetching anything
    download_dump(dump_url(server), destination, allow_unverified=True, show_progress=False)
    assert destination.read_bytes() == server.payload
    assert f"sha256 is {hashlib.sha256(server.payload).hexdigest()}" in capsys.readouterr().err


def test_cli_download_then_clean(tmp_path: Path, server: RangeServer) -> None:
    output = tmp_path / "corpus.txt"
    md5 = hashlib.md5(server.payload).hexdigest()
    argv = [
        "corpus",
        "--download",
        dump_url(server),
        "--md5",
        md5,
        "-o",
        str(output),
        "--min-chars",
        str(MIN_CHARS),
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    assert output.read_text(encoding="utf-8") == EXPECTED_DUMP_TEXT
    assert (tmp_path / "dump.xml.bz2").read_bytes() == server.payload


# --- real data -----------------------------------------------------------------------------------

SHARED_DATA = Path(os.environ.get("REFORBERT_SHARED_DATA", Path(__file__).parents[1].parent / "shared/data"))
KOWIKI = SHARED_DATA / "kowiki" / "AA"


@pytest.mark.skipif(not (KOWIKI / "wiki_01").exists(), reason="shared kowiki data absent")
def test_real_kowiki_files_come_out_clean(tmp_path: Path) -> None:
    files = [KOWIKI / "wiki_00", KOWIKI / "wiki_01"]
    output = tmp_path / "kowiki.txt"
    stats = build_corpus(files, output, workers=2, show_progress=False)
    text = output.read_text(encoding="utf-8")
    for leftover in ("formula_", "codice_", "(, ", "()", "<br", "[[", "]]", "&quot;", "</doc>"):
        assert leftover not in text, leftover
    documents = text.split("\n\n")
    assert len(documents) == stats.documents_kept > 100
    assert documents[0].startswith('지미 카터\n제임스 얼 "지미" 카터 주니어(1924년 10월 1일 ~ )는')
    assert all(len(doc.split("\n", 1)[1]) >= corpus_module.DEFAULT_MIN_CHARS for doc in documents)
    assert stats.dropped["shorter than min-chars"] > 0
