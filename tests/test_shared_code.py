"""The five scripts repeat their helpers on purpose, so that each file reads alone. A helper that does the same
job in two scripts must be written word for word the same in both: this test compares the source of every
top-level function, class and constant that two scripts share, so the copies cannot drift apart."""
import ast

import pytest

from helpers import REPO

KINDS = {"MNIST": ("vanilla_gan", "lsgan", "dcgan_mnist"), "photos": ("dcgan64", "dcgan256")}
SCRIPTS = KINDS["MNIST"] + KINDS["photos"]
# What differs by design: the GAN itself (its networks, flags and algorithm) and the image size.
OWN = {"Generator", "Discriminator", "init_weights", "noise", "build", "train_step", "NETWORK_FLAGS", "IMAGE_SIZE",
       "parse_args"}
# What differs between the kinds only: MNIST lives on the device in one process, photos are loaded by workers
# and trained under torchrun; dcgan64's and dcgan256's loops differ in their shape comments alone.
OWN_TO_A_KIND = {"train", "should_stop", "to_model_range"}


def top_level_sources(script):
    """{name: source} of the top-level functions, classes and assignments of one script."""
    source = (REPO / f"{script}.py").read_text()
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = ast.get_source_segment(source, node)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = ast.get_source_segment(source, node)
    return found


SOURCES = {script: top_level_sources(script) for script in SCRIPTS}


def differing(scripts, skip):
    """The names that several of these scripts define, not in skip, whose sources are not all the same."""
    names = {name for script in scripts for name in SOURCES[script]} - skip
    return sorted(name for name in names
                  if len({SOURCES[s][name] for s in scripts if name in SOURCES[s]}) > 1)


@pytest.mark.parametrize("kind", KINDS)
def test_helpers_are_the_same_in_every_script_of_a_kind(kind):
    loops = {"train"} if kind == "photos" else set()
    assert differing(KINDS[kind], OWN | loops) == []


def test_helpers_of_all_five_scripts_are_the_same():
    assert differing(SCRIPTS, OWN | OWN_TO_A_KIND) == []


def test_the_helpers_compared_are_the_ones_that_matter():
    """The comparison would pass vacuously if the scripts stopped sharing names: check it covers the helpers
    that drifted apart before (write_gif, sample, the checkpoint, the signal clean-up) and the whole plumbing."""
    everywhere = set.intersection(*(set(SOURCES[s]) for s in SCRIPTS)) - OWN - OWN_TO_A_KIND
    assert {"write_gif", "sample", "save_checkpoint", "load_checkpoint", "StopSignals", "Position", "RunLog",
            "save_progress", "generate", "main"} <= everywhere
