"""The chat prompts of the supervised phase (services/critique/prompting.py)."""

from services.constitution import load_constitution
from services.critique import prompting


def test_every_critique_chat_asks_for_short_critiques_and_short_finished_rewrites():
    """The system turn, first in every critique and revision chat, bounds both lengths: a small model
    left to its own length runs into the token limit on most revisions, which are then not trained on."""
    p = load_constitution(None).critique_revision[0]
    chat = prompting.critique_chat([{"role": "user", "content": "q"}], "a", p)
    revision = prompting.revision_chat(chat, "It is rude.", p)
    for messages in (chat, revision):
        assert messages[0] == {"role": "system", "content": prompting.TASK}
    assert "two or three sentences" in prompting.TASK
    assert "short" in prompting.TASK and "finish it" in prompting.TASK
