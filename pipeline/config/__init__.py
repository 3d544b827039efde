"""What a user chooses: the choices offered by name, each option's one definition, and the groups of options the stages' configs are made of. Imports nothing heavy: `w2s-pipe --help` reads it."""
