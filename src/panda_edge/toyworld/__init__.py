"""A synthetic "toy world" of short videos with question-answer pairs, to train a tiny Video-Panda.

Each video shows 1-3 distinct shapes on a grey background, each sliding in a straight line; one event
defines the video (a shape crosses the frame, appears, disappears, or two shapes appear one after the
other). Questions have one short
canonical answer so normalized exact match can score them. Answers are balanced within each
question type by stratified sampling over the video index, so guessing the majority answer does
not pay. Everything is a pure function of (seed, video index): the same seed gives the same bytes.

`scenes` plans each video (objects, paths, visibility, its balanced questions), `render` draws its
frames, `questions` writes the conversation entries and captions, `writer` runs the process pool and
writes the files.
"""
