"""The privileged-context template of the RLSD authors: the question, then the reference (an answer,
a verified trace or a document), then an instruction to solve the problem in the model's own way.

The teacher sees ``PRIVILEGED_TEMPLATE.format(prompt=..., reference=...)`` followed by the student's
response; its log-probs on that response set the magnitude of each token's credit.
"""

PRIVILEGED_TEMPLATE = (
    "{prompt}\n\nHere is a reference solution:\n{reference}\n\n"
    "After understanding the reference solution, please try to solve this problem using your own "
    "approach below:\n"
)
