"""facekit's own features, written as ordinary plugins and registered through entry points."""
