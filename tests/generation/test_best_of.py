"""Best of N (issue 20): ICG draws N covers per pair and keeps the one the stage-1 click model scores highest.

Candidate 0 is the cover made without picking; the pick is the argmax of scores computed separately, cover for cover.
"""

import pytest
import torch

from icg.generation import UserTable
from icg.generation.generator import reference_batch, sample_covers
from icg.generation.picking import BestOf, ClickScorer, best_of
from icg.generation.seeds import candidate_seeds
from icg.models.image_encoders import TinyImageEncoder
from icg.models.preference import PreferenceModel
from icg.models.rewards.preference import PreferenceReward
from tests.helpers.generation import tiny_generator

USERS = ["u1", "u2", "u3"]
PAIRS = ["u1", "u3", "stranger", "u2", "u1"]  # a stranger: scored as the cold-start user
TITLES = ["Red star", "Blue circle", "Green heart", "Pink square", "Dark moon"]
ITEMS = ["i1", "i2", "i3", "i4", "i5"]


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(3)
    return tiny_generator(UserTable(USERS, torch.randn(len(USERS) + 1, 8)))


@pytest.fixture(scope="module")
def refs() -> torch.Tensor:
    return torch.rand(len(PAIRS), 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def scorer() -> ClickScorer:
    """A stage-1 click model with distinct users (random, built from config: the pick only needs a score)."""
    torch.manual_seed(0)
    model = PreferenceModel(TinyImageEncoder(input_size=16, channels=[8]), num_users=len(USERS), embed_dim=8,
                            hidden_dim=16)  # fmt: skip
    with torch.no_grad():
        model.user_embedding_table.weight.normal_(0.0, 1.0)
    return ClickScorer(PreferenceReward(model_spec=model, user_ids=USERS))


@torch.no_grad()
def test_best_of_n_keeps_each_pairs_highest_scoring_candidate(gen, refs, scorer):
    n = 4
    out = gen(PAIRS, TITLES, refs, item_ids=ITEMS, output_type="pt", best_of=BestOf(scorer, n, keep_all=True))
    # Separately: every candidate's covers from its own seeds through the plain sampling path, then scored.
    r = reference_batch(refs, gen.image_size)
    cond = gen.conditioning(gen.users.lookup(PAIRS)[0], TITLES, r)
    drawn = [sample_covers(gen.diffusion, cond, candidate_seeds(out.seeds, c), num_steps=3, image_size=32)
             for c in range(n)]  # fmt: skip
    scores = torch.stack([scorer(images, PAIRS, TITLES) for images in drawn], dim=1)  # B x N
    best = scores.argmax(dim=1)
    assert out.candidate == best.tolist() and set(out.candidate) != {0}  # not always the first candidate
    torch.testing.assert_close(torch.tensor(out.score), scores.max(dim=1).values)
    torch.testing.assert_close(out.candidate_scores, scores)
    for k, c in enumerate(best.tolist()):
        assert torch.equal(out.images[k], drawn[c][k])
        assert torch.equal(out.candidate_images[k], torch.stack([d[k] for d in drawn]))
    # candidate 0 is the cover made without picking
    plain = gen(PAIRS, TITLES, refs, item_ids=ITEMS, output_type="pt")
    assert torch.equal(drawn[0], plain.images) and out.seeds == plain.seeds
    assert len(set(candidate_seeds(out.seeds, 1) + candidate_seeds(out.seeds, 2) + out.seeds)) == 3 * len(PAIRS)


@torch.no_grad()
def test_one_candidate_is_todays_cover_with_its_score(gen, refs, scorer):
    plain = gen(PAIRS, TITLES, refs, item_ids=ITEMS, output_type="pt")
    one = gen(PAIRS, TITLES, refs, item_ids=ITEMS, output_type="pt", best_of=BestOf(scorer, 1))
    assert torch.equal(one.images, plain.images) and one.candidate == [0] * len(PAIRS)
    torch.testing.assert_close(torch.tensor(one.score), scorer(plain.images, PAIRS, TITLES))
    assert plain.candidate == [] and plain.score == [] and plain.candidate_images is None


def test_ties_keep_the_first_candidate_and_bad_counts_are_refused(scorer):
    picked = best_of(lambda seeds: torch.full((2, 3, 4, 4), float(seeds[0] % 7)), lambda x: torch.ones(2), [1, 2], 3)
    assert picked.index.tolist() == [0, 0] and picked.all_images is None
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="candidates must be an integer >= 1"):
            BestOf(scorer, bad)
