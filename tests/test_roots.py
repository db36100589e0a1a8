"""Which image URIs may be read (`model.data.roots`): the rule shared by the worker's image source
and the retraining's recorded-image reader. Only the decision is tested here, nothing is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model.data.roots import OutsideRoots, Roots


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    allowed = tmp_path / "images"
    outside = tmp_path / "private"
    (allowed / "line3").mkdir(parents=True)
    outside.mkdir()
    (allowed / "line3" / "ok.png").write_bytes(b"x")
    (outside / "secret.png").write_bytes(b"x")
    os.symlink(outside / "secret.png", allowed / "escape.png")
    os.symlink(outside, allowed / "escape-dir")
    return allowed, outside


def test_roots_are_parsed_into_directories_and_url_prefixes(tree):
    allowed, _ = tree
    roots = Roots.parse([str(allowed), "s3://bucket/img", "memory://line3/images/"])
    assert roots.local == (allowed.resolve(),)
    assert roots.urls == ("s3://bucket/img/", "memory://line3/images/")
    assert roots.configured and not Roots.parse([]).configured
    assert Roots.parse([allowed.as_uri()]).local == (allowed.resolve(),)


def test_a_file_under_a_root_is_accepted(tree):
    allowed, _ = tree
    roots = Roots.parse([str(allowed)])
    ok = (allowed / "line3" / "ok.png").resolve()
    for uri in [
        str(ok),
        ok.as_uri(),
        f"file://localhost{ok}",
        f"file://{allowed}/x/../line3/ok.png",
    ]:
        assert roots.resolve(uri) == ok, uri
    missing = roots.resolve(str(allowed / "not-there.png"))  # existence is the reader's concern
    assert missing == (allowed / "not-there.png").resolve()


@pytest.mark.parametrize(
    "uri",
    [
        "{allowed}/escape.png",  # a symlink inside the root pointing out of it
        "file://{allowed}/escape.png",
        "file://{allowed}/escape-dir/secret.png",  # a linked directory
        "{outside}/secret.png",
        "file://{allowed}/../private/secret.png",
        "file://otherhost{allowed}/line3/ok.png",
        "file:///etc/passwd",
    ],
)
def test_local_paths_outside_the_roots_are_refused(tree, uri):
    allowed, outside = tree
    with pytest.raises(OutsideRoots):
        Roots.parse([str(allowed)]).resolve(uri.format(allowed=allowed, outside=outside))


def test_a_url_under_a_prefix_is_accepted_as_is():
    roots = Roots.parse(["memory://line3/images", "s3://bucket/img/"])
    for uri in ["memory://line3/images/a.png", "s3://bucket/img/2024/01/b.png"]:
        assert roots.resolve(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "memory://line3/images/../../other/b.png",  # `..` climbs out of the prefix
        "s3://bucket/img/../secret/b.png",
        "s3://bucket/img/a/../b.png",  # `..` refused even when it would stay inside
        "s3://bucket/other/b.png",  # under no prefix
        "s3://bucket/img-evil/a.png",  # a prefix of the name, not a directory
        "gs://bucket/img/a.png",  # another scheme
    ],
)
def test_urls_outside_every_prefix_or_with_dots_are_refused(uri):
    roots = Roots.parse(["memory://line3/images", "s3://bucket/img/"])
    with pytest.raises(OutsideRoots, match="outside the configured image roots"):
        roots.resolve(uri)


def test_no_roots_admit_nothing(tree):
    allowed, _ = tree
    with pytest.raises(OutsideRoots):
        Roots.parse([]).resolve(str(allowed / "line3" / "ok.png"))
    with pytest.raises(OutsideRoots):
        Roots.parse([]).resolve("s3://bucket/img/a.png")
    with pytest.raises(OutsideRoots):  # local roots do not admit URLs, nor the reverse
        Roots.parse([str(allowed)]).resolve("s3://bucket/img/a.png")
