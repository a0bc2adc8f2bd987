"""The build pipeline: settings -> plan -> work folder -> local / served generation -> judge -> recipes -> assembled space."""
