import torch

from model.net.layers import read_global_grid, read_local_grid


def node_coord(i: int, g: int) -> float:
    """Coordinate of grid node i under align_corners=False."""
    return (2 * i + 1) / g - 1


def test_local_read_returns_node_values_at_node_coordinates():
    torch.manual_seed(0)
    c, g = 5, 8
    grid = torch.randn(c, g, g)
    for i, j in [(0, 0), (3, 5), (7, 7), (2, 6)]:
        coords = torch.tensor([node_coord(j, g), node_coord(i, g)]).view(1, 2, 1, 1)
        out = read_local_grid(grid, coords)
        torch.testing.assert_close(out[0, :, 0, 0], grid[:, i, j])


def test_local_read_interpolates_between_nodes():
    torch.manual_seed(1)
    c, g = 4, 8
    grid = torch.randn(c, g, g)
    x = (node_coord(2, g) + node_coord(3, g)) / 2  # halfway between columns 2 and 3
    y = node_coord(4, g) * 0.75 + node_coord(5, g) * 0.25  # a quarter of the way to row 5
    out = read_local_grid(grid, torch.tensor([x, y]).view(1, 2, 1, 1))[0, :, 0, 0]
    row4 = (grid[:, 4, 2] + grid[:, 4, 3]) / 2
    row5 = (grid[:, 5, 2] + grid[:, 5, 3]) / 2
    torch.testing.assert_close(out, 0.75 * row4 + 0.25 * row5)


def test_local_read_is_per_position():
    grid = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 8, 8)
    coords = torch.zeros(3, 2, 4, 4)
    coords[1, 0, 2, 3] = node_coord(7, 8)
    coords[1, 1, 2, 3] = node_coord(0, 8)
    out = read_local_grid(grid, coords)
    assert out.shape == (3, 2, 4, 4)
    torch.testing.assert_close(out[1, :, 2, 3], grid[:, 0, 7])


def test_global_read_returns_whole_maps_channel_major():
    torch.manual_seed(2)
    c, s, g = 3, 5, 4
    maps = torch.randn(g, g, c, s, s)  # node (i, j) holds a whole C x S x S map
    grid = maps.permute(2, 3, 4, 0, 1).reshape(1, c * s * s, g, g)
    coords = torch.tensor(
        [[node_coord(1, g), node_coord(2, g)], [node_coord(3, g), node_coord(0, g)]]
    )
    out = read_global_grid(grid, coords, c, s)
    assert out.shape == (2, c, s, s)
    torch.testing.assert_close(out[0], maps[2, 1])
    torch.testing.assert_close(out[1], maps[0, 3])
    mid = torch.tensor([[(node_coord(1, g) + node_coord(2, g)) / 2, node_coord(0, g)]])
    torch.testing.assert_close(read_global_grid(grid, mid, c, s)[0], (maps[0, 1] + maps[0, 2]) / 2)
