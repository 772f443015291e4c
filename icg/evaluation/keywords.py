"""Keywords of a user's click history for a handcrafted personalized prompt: the baseline ICG's MLLM-based prompting
is set against (Bian et al., EMNLP 2025).

PMG (Shen et al., 2024) and its kin personalize a text-to-image prompt with keywords drawn from the items a user
clicked. Here, for each user, the words of the titles of their *train* clicks (never a held-out click) are counted,
each once per title, and ranked by that count, ties in alphabetical order; a pair's prompt is its item's title
followed by the first ``num_words`` of them that the title does not already contain. The words that may be taken are
a ``vocabulary`` (the synthetic platform's colour and style words, ``icg.data.synthetic.prompt_vocabulary``) or, when
none is given, every word of the titles outside ``STOP_WORDS``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from icg.data.datamodule import ICGDataModule
from icg.data.splits import TRAIN
from icg.diffusion.title_tokens import title_words

# Function words of English titles: never a keyword when the vocabulary is taken from the titles themselves.
STOP_WORDS = frozenset(
    "a an the and or but of on in at to for from by with without over under against into onto as is are be this that "
    "its it one only s".split()
)


class HistoryKeywords:
    """Per user, the keywords of their clicked titles, most frequent first.

    Args:
        clicked_titles: user id -> the titles of the items that user clicked in the train split (a user missing from
            it, or with none, has no keywords).
        vocabulary: the words that may become keywords (None: any title word outside ``stop_words``).
        stop_words: words never taken when ``vocabulary`` is None.
    """

    def __init__(
        self,
        clicked_titles: Mapping[str, Sequence[str]],
        vocabulary: Iterable[str] | None = None,
        stop_words: Iterable[str] = STOP_WORDS,
    ) -> None:
        self.clicked_titles = clicked_titles
        self.vocabulary = None if vocabulary is None else frozenset(w.lower() for w in vocabulary)
        self.stop_words = frozenset(stop_words)
        self._ranked: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_datamodule(cls, dm: ICGDataModule, vocabulary: Iterable[str] | None = None) -> HistoryKeywords:
        """From a set-up DataModule's train split (its ``holdout`` decides what is held out, as for every stage)."""
        return cls(TrainClickTitles(dm), vocabulary)

    def ranked(self, user_id: str) -> tuple[str, ...]:
        """The user's keywords: most clicked titles containing the word first, ties alphabetical."""
        user_id = str(user_id)
        if user_id not in self._ranked:
            counts: Counter[str] = Counter()
            for title in self.clicked_titles.get(user_id, ()):
                counts.update({w for w in title_words(str(title)) if self._allowed(w)})
            self._ranked[user_id] = tuple(sorted(counts, key=lambda w: (-counts[w], w)))
        return self._ranked[user_id]

    def words(self, user_id: str, title: str, num_words: int) -> list[str]:
        """The first ``num_words`` of the user's keywords that ``title`` does not contain."""
        present = set(title_words(title))
        return [w for w in self.ranked(user_id) if w not in present][:num_words]

    def prompt(self, user_id: str, title: str, num_words: int) -> str:
        """``title`` followed by the user's keywords (``"Red circle on a dark backdrop, blue, striped"``); the title
        alone for a user without train clicks."""
        words = self.words(user_id, title, num_words)
        return ", ".join([title, *words]) if words else title

    def _allowed(self, word: str) -> bool:
        if self.vocabulary is not None:
            return word in self.vocabulary
        return word not in self.stop_words and not word.isdigit()


class TrainClickTitles(Mapping[str, list[str]]):
    """User id -> the titles of that user's train-split clicks, read from a DataModule's log on demand (the log is
    sorted by user and time; each user's train rows end at ``log.train_end``)."""

    def __init__(self, dm: ICGDataModule) -> None:
        self.log, self.titles = dm.log, dm.catalogue.titles
        self.index = {str(u): row for row, u in enumerate(dm.user_ids)}

    def __getitem__(self, user_id: str) -> list[str]:
        row = self.index[str(user_id)]
        start, stop = int(self.log.user_start[row]), int(self.log.train_end[row])
        keep = (self.log.part[start:stop] == TRAIN) & (self.log.click[start:stop] > 0)
        return [str(self.titles[i]) for i in np.asarray(self.log.item[start:stop])[keep]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)
