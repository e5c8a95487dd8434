"""The scripts of a family repeat their helpers on purpose, so that each file reads alone: the three MNIST scripts
share theirs, the two photo scripts theirs. A helper that does the same job in two scripts of a family must be
written word for word the same in both: this test compares the source of every top-level function, class and
constant that the scripts of a family share, so the copies cannot drift apart. Families share nothing by rule:
each family's helpers carry only what that family uses."""
import ast

import pytest

from helpers import REPO

FAMILIES = {"MNIST": ("vanilla_gan", "lsgan", "dcgan_mnist"), "photos": ("dcgan64", "dcgan256")}
# What differs by design: the GAN itself (its networks, flags and algorithm), the image size, and in the photo
# scripts the shape comments of the step and the loop.
OWN = {"MNIST": {"Generator", "Discriminator", "init_weights", "noise", "build", "train_step", "NETWORK_FLAGS",
                 "parse_args", "sample"},
       "photos": {"Generator", "Discriminator", "init_weights", "IMAGE_SIZE", "NETWORK_FLAGS",
                  "parse_args", "train_step", "train"}}
# The plumbing each family must share, so that the comparison cannot pass by the scripts no longer sharing names.
SHARED = {"MNIST": {"train", "setup", "fail", "open_run", "RunLog", "generate", "main", "PARTS", "KEEP_EPOCHS"},
          "photos": {"load_image", "Photos", "cache_images", "setup", "amp_dtype", "Stopper", "save", "sample",
                     "load_checkpoint", "open_run", "RunLog", "warn_if_d_wins", "generate", "main"}}


def top_level_sources(script):
    """{name: source} of the top-level functions, classes and assignments of one script."""
    source = (REPO / f"{script}.py").read_text()
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = ast.get_source_segment(source, node)
        elif isinstance(node, ast.Assign):                      # NAME = ... or A, B = ...
            names = [n.id for n in ast.walk(node.targets[0]) if isinstance(n, ast.Name)]
            found[names[0]] = ast.get_source_segment(source, node)
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_the_helpers_of_a_family_are_word_for_word_the_same(family):
    sources = [top_level_sources(script) for script in FAMILIES[family]]
    shared = set.intersection(*map(set, sources)) - OWN[family]
    assert SHARED[family] <= shared
    assert sorted(name for name in shared if len({s[name] for s in sources}) > 1) == []
