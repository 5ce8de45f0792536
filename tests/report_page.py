"""The parts of a report.html that the tests check, parsed with the standard library."""
import html.parser


class ReportPage(html.parser.HTMLParser):
  """Sections by id, every img src, and the data-key of each element inside each section."""

  def __init__(self):
    super().__init__()
    self.sections, self.sources, self.keys = [], [], {}

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "section":
      self.sections.append(attrs["id"])
    if tag == "img":
      self.sources.append(attrs["src"])
    if "data-key" in attrs:
      self.keys.setdefault(self.sections[-1], []).append(attrs["data-key"])
