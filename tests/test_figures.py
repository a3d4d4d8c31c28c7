"""The figures people read: attention overlays and alignment heatmaps."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from showattend.captioning.overlay import AttentionRow, attention_figure  # noqa: E402
from showattend.translation.plot import plot_alignment, readable_pieces  # noqa: E402


@pytest.mark.parametrize("size", [(300, 300), (600, 200), (200, 600), (500, 375)])
@pytest.mark.parametrize("colorbar", [False, True])
def test_no_title_overlaps_an_image_at_any_aspect_ratio(size, colorbar):
    words = "a man with a long word microphone on a leash".split()
    alphas = torch.softmax(torch.randn(len(words) + 1, 49), -1)
    rows = [AttentionRow("soft", words, alphas, torch.rand(len(words) + 1)),
            AttentionRow("hard", words[:4], alphas[:5], None, True)]
    fig = attention_figure(Image.new("RGB", size, "gray"), rows, (7, 7), colorbar=colorbar)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    images = [ax.get_window_extent(renderer) for ax in fig.axes if ax.images]
    texts = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    texts.append(fig._suptitle.get_window_extent(renderer))
    assert len(images) == 1 + len(words) + 1 + 1 + 4 + 1  # per block: the image, each word, <end>
    for t in texts:
        for im in images:
            overlap_w = min(t.x1, im.x1) - max(t.x0, im.x0)
            overlap_h = min(t.y1, im.y1) - max(t.y0, im.y0)
            assert overlap_w <= 0.5 or overlap_h <= 0.5, (size, t, im)
    plt.close(fig)


def test_readable_subwords_and_alignment_colour_bar(tmp_path):
    assert readable_pieces(["▁Ein", "▁Fahr", "rad", ".", "</s>", "▁"]) == ["Ein", "Fahr", "-rad", "-.", "</s>", "▁"]
    path = plot_alignment(["▁Ein", "▁Hund"], ["▁A", "▁dog", "</s>"], torch.eye(3, 2), str(tmp_path / "a.png"))
    img = Image.open(path)
    assert img.size[0] > 300 and img.size[1] > 200
