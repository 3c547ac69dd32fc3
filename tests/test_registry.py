import pytest

from harness.errors import RegistryError
from harness.registry import Registry


def make():
    reg = Registry("widget")

    @reg.register
    def goodfellow2014(*, dropout: float = 0.5, width: int = 3):
        """The original."""
        return ("g", dropout, width)

    @reg.register("goodfellow_bn")
    def _other(*, batch_norm: bool = True):
        return ("b", batch_norm)

    return reg


def test_list_by_pattern_and_create():
    reg = make()
    assert reg.list() == ["goodfellow2014", "goodfellow_bn"]
    assert reg.list("goodfellow2*") == ["goodfellow2014"]
    assert reg.list("nothing*") == []
    assert reg.create("goodfellow2014", dropout=0.1) == ("g", 0.1, 3)
    assert reg.describe("goodfellow2014") == "The original."
    assert reg.options("goodfellow2014") == {"dropout": 0.5, "width": 3}


def test_unknown_name_lists_close_matches_and_registry():
    reg = make()
    with pytest.raises(RegistryError) as err:
        reg.get("goodfelow2014")
    message = str(err.value)
    assert "unknown widget 'goodfelow2014'" in message
    assert "did you mean 'goodfellow2014'" in message


def test_duplicate_name_is_an_error():
    reg = make()
    with pytest.raises(RegistryError, match="widget registry: 'goodfellow2014' is already registered"):
        reg.register("goodfellow2014")(lambda: None)


def test_unknown_and_mistyped_options():
    reg = make()
    with pytest.raises(RegistryError, match="has no option 'dropot'.*dropout, width"):
        reg.create("goodfellow2014", dropot=0.2)
    with pytest.raises(RegistryError, match="option 'width' must be int, got 'wide'"):
        reg.check_option_types("goodfellow2014", {"width": "wide"})
    with pytest.raises(RegistryError, match="must be bool"):
        reg.check_option_types("goodfellow_bn", {"batch_norm": 1})
    reg.check_option_types("goodfellow2014", {"dropout": 1})  # an int is a valid float
