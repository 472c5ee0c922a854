"""The teacher's prompt: the RLSD authors' privileged-context template (the question, then the
reference: an answer, a verified trace or a document, then an instruction to solve the problem in
the model's own way), and the one rule that fills it, for plain-text and chat prompts alike.

The teacher sees ``privileged_prompt(prompt, reference)`` followed by the student's response; its
log-probs on that response set the magnitude of each token's credit. The trainer, the TRL adapter
and the veRL recipe all build it here.
"""

from __future__ import annotations

PRIVILEGED_TEMPLATE = (
    "{prompt}\n\nHere is a reference solution:\n{reference}\n\n"
    "After understanding the reference solution, please try to solve this problem using your own "
    "approach below:\n"
)


def privileged_prompt(prompt, reference, template: str | None = None):
    """``template`` (default :data:`PRIVILEGED_TEMPLATE`) filled with the question and ``str(reference)``.

    ``prompt`` is the question as a string (the result is a string), or chat messages, a list of
    ``{"role", "content"}`` mappings (the result is a new list: the last ``user`` turn's content is the
    question and is replaced, every other turn is kept as it is)."""
    template = PRIVILEGED_TEMPLATE if template is None else template
    if isinstance(prompt, str):
        return template.format(prompt=prompt, reference=str(reference))
    messages = [dict(m) for m in prompt]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None:
        raise ValueError(f"the prompt has no user turn to add the reference to (roles: "
                         f"{[m.get('role') for m in messages]})")
    question = messages[last].get("content")
    if not isinstance(question, str):
        raise TypeError(f"privileged prompts are built for text messages: the last user turn's content is "
                        f"{type(question).__name__}, not str")
    messages[last]["content"] = template.format(prompt=question, reference=str(reference))
    return messages
