"""Reading text through a model: teacher-forced capture, transcripts and their windows, placing a turn in a space."""
