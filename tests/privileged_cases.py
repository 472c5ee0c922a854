"""Teacher prompts written out by hand, each (prompt, reference, template, the teacher's prompt):
the library's builder, the trainer, the TRL adapter and the veRL recipe must all produce these."""

SYSTEM = {"role": "system", "content": "Be brief."}
HINT = "{prompt} | hint: {reference}"

PLAIN = [
    ("2+2=", 4, HINT, "2+2= | hint: 4"),
    ("2+2=", "4", None, "2+2=\n\nHere is a reference solution:\n4\n\nAfter understanding the reference solution, "
                        "please try to solve this problem using your own approach below:\n"),
]
CHAT = [
    ([SYSTEM, {"role": "user", "content": "2+2="}], "4", HINT,
     [SYSTEM, {"role": "user", "content": "2+2= | hint: 4"}]),
    ([{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2="}],
     "4", HINT,
     [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"},
      {"role": "user", "content": "2+2= | hint: 4"}]),
    ([{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "Let me see."}], 4, HINT,
     [{"role": "user", "content": "2+2= | hint: 4"}, {"role": "assistant", "content": "Let me see."}]),
]
