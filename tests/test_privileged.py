"""The privileged-prompt builder: one rule for plain strings and chat messages (the last user turn)."""

import copy

import pytest

from privileged_cases import CHAT, PLAIN
from rlsd_kernels.privileged import PRIVILEGED_TEMPLATE, privileged_prompt


@pytest.mark.parametrize("prompt,reference,template,want", PLAIN + CHAT)
def test_builds_the_written_out_prompts(prompt, reference, template, want):
    before = copy.deepcopy(prompt)
    assert privileged_prompt(prompt, reference, template) == want
    assert prompt == before  # the caller's messages are not changed


def test_default_template_and_tuple_of_messages():
    assert privileged_prompt("q", "r") == PRIVILEGED_TEMPLATE.format(prompt="q", reference="r")
    assert privileged_prompt(({"role": "user", "content": "q"},), "r", "{reference}:{prompt}") == \
        [{"role": "user", "content": "r:q"}]


def test_refuses_prompts_without_a_text_question():
    with pytest.raises(ValueError, match="no user turn.*'system'"):
        privileged_prompt([{"role": "system", "content": "x"}], "3")
    with pytest.raises(TypeError, match="text messages: the last user turn's content is list"):
        privileged_prompt([{"role": "user", "content": [{"type": "image"}]}], "3")
