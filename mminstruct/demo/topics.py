"""What the demo charts are about: titles, axis labels, categories and value ranges.

Plain data, used by ``charts.make_spec``. ``subject`` is a lower-case phrase for captions and
dataset descriptions ("sales by region"). Company and product names are invented.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CategoryTopic:
    """Values per category (bar charts)."""

    title: str
    subject: str
    xlabel: str
    ylabel: str
    unit: str
    categories: tuple[str, ...]
    scale: tuple[int, int, int]  # lo, hi, step


@dataclass(frozen=True)
class TrendTopic:
    """Values over years or months (line charts)."""

    title: str
    subject: str
    xlabel: str
    ylabel: str
    unit: str
    axis: str  # "year" | "month"
    scale: tuple[int, int, int]


@dataclass(frozen=True)
class ShareTopic:
    """Parts of a whole in percent (pie charts)."""

    title: str
    subject: str
    ylabel: str
    categories: tuple[str, ...]


@dataclass(frozen=True)
class RelationTopic:
    """Two measured quantities (scatter plots); ``sign`` 0 means either direction."""

    title: str
    subject: str
    xlabel: str
    ylabel: str
    xrange: tuple[float, float]
    yrange: tuple[float, float]
    sign: int


REGIONS = ("North", "South", "East", "West", "Central", "Coastal", "Highlands", "Islands")
CITIES = ("Avonport", "Brightwater", "Cedarfield", "Dunmore", "Eastvale", "Fairhaven", "Glenrock",
          "Harrowgate")
FRUITS = ("Apple", "Banana", "Cherry", "Grape", "Mango", "Orange", "Pear", "Kiwi")
DEPARTMENTS = ("Math", "Physics", "Biology", "History", "Art", "Economics", "Music", "Law")
TRANSPORT = ("Car", "Bus", "Bike", "Walk", "Train", "Tram", "Ferry", "Scooter")
BUDGET = ("Housing", "Food", "Transport", "Health", "Leisure", "Savings", "Education", "Other")
BRANDS = ("Avio", "Brightel", "Corelink", "Duma", "Eonix", "Fizzo", "Gravo", "Helia")
ENERGY = ("Coal", "Gas", "Nuclear", "Solar", "Wind", "Hydro", "Biomass", "Oil")
SPORTS = ("Football", "Tennis", "Swimming", "Cycling", "Running", "Basketball", "Golf", "Rugby")
COUNTRIES = ("Aldoria", "Borvia", "Calmont", "Drelland", "Estavia", "Fenmark", "Galvia", "Hestria")
TRAFFIC = ("Search", "Social", "Direct", "Email", "Referral", "Ads", "Video", "Other")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

CATEGORY_TOPICS: tuple[CategoryTopic, ...] = (
    CategoryTopic("Sales by Region", "sales by region", "Region", "Sales (million $)", "million $",
                  REGIONS, (10, 120, 1)),
    CategoryTopic("Population by City", "population by city", "City", "Population (thousands)",
                  "thousand", CITIES, (50, 950, 10)),
    CategoryTopic("Favourite Fruit Survey", "favourite fruits", "Fruit", "Votes", "votes", FRUITS,
                  (5, 95, 1)),
    CategoryTopic("Students per Department", "students per department", "Department", "Students",
                  "students", DEPARTMENTS, (20, 400, 5)),
    CategoryTopic("How People Commute", "commuting modes", "Mode", "Commuters (%)", "%", TRANSPORT,
                  (2, 60, 1)),
    CategoryTopic("Monthly Household Spending", "household spending", "Category", "Spending ($)", "$",
                  BUDGET, (50, 1500, 25)),
    CategoryTopic("Units Sold by Brand", "units sold by brand", "Brand", "Units sold (thousands)",
                  "thousand", BRANDS, (5, 250, 5)),
    CategoryTopic("Electricity Generation by Source", "electricity generation by source", "Source",
                  "Generation (TWh)", "TWh", ENERGY, (3, 90, 1)),
    CategoryTopic("Club Members by Sport", "club members by sport", "Sport", "Members", "members",
                  SPORTS, (10, 300, 5)),
    CategoryTopic("Medals Won by Country", "medals by country", "Country", "Medals", "medals",
                  COUNTRIES, (1, 60, 1)),
    CategoryTopic("Website Visits by Source", "website visits by source", "Source",
                  "Visits (thousands)", "thousand", TRAFFIC, (2, 180, 2)),
)

TREND_TOPICS: tuple[TrendTopic, ...] = (
    TrendTopic("Annual Revenue", "annual revenue", "Year", "Revenue (million $)", "million $", "year",
               (10, 200, 1)),
    TrendTopic("Average Monthly Temperature", "monthly temperature", "Month", "Temperature (°C)", "°C",
               "month", (-5, 35, 1)),
    TrendTopic("Website Visitors", "website visitors", "Year", "Visitors (thousands)", "thousand",
               "year", (20, 900, 10)),
    TrendTopic("Unemployment Rate", "the unemployment rate", "Year", "Rate (%)", "%", "year",
               (2, 15, 1)),
    TrendTopic("Monthly Rainfall", "monthly rainfall", "Month", "Rainfall (mm)", "mm", "month",
               (5, 250, 5)),
    TrendTopic("Average House Price", "house prices", "Year", "Price (thousand $)", "thousand $",
               "year", (120, 600, 5)),
    TrendTopic("Café Sales per Month", "café sales", "Month", "Cups sold", "cups", "month",
               (200, 3000, 50)),
    TrendTopic("Car Production", "car production", "Year", "Cars (thousands)", "thousand", "year",
               (30, 400, 5)),
    TrendTopic("Electricity Use", "electricity use", "Month", "Consumption (kWh)", "kWh", "month",
               (150, 900, 10)),
)

SHARE_TOPICS: tuple[ShareTopic, ...] = (
    ShareTopic("Smartphone Market Share", "smartphone market share", "Share", BRANDS),
    ShareTopic("Energy Mix", "the energy mix", "Share", ENERGY),
    ShareTopic("Household Budget", "a household budget", "Share", BUDGET),
    ShareTopic("Website Traffic Sources", "website traffic sources", "Share", TRAFFIC),
    ShareTopic("Favourite Fruit", "favourite fruits", "Share", FRUITS),
    ShareTopic("Commuting Modes", "commuting modes", "Share", TRANSPORT),
    ShareTopic("Favourite Sport", "favourite sports", "Share", SPORTS),
    ShareTopic("Students by Department", "students by department", "Share", DEPARTMENTS),
)

RELATION_TOPICS: tuple[RelationTopic, ...] = (
    RelationTopic("Height vs Weight", "height and weight", "Height (cm)", "Weight (kg)",
                  (150, 200), (45, 110), 1),
    RelationTopic("Study Hours vs Exam Score", "study hours and exam scores", "Study hours",
                  "Exam score", (0, 20), (30, 100), 1),
    RelationTopic("Advertising vs Sales", "advertising spend and sales", "Ad spend (k$)",
                  "Sales (k$)", (5, 100), (50, 400), 1),
    RelationTopic("Temperature vs Ice Cream Sales", "temperature and ice cream sales",
                  "Temperature (°C)", "Ice creams sold", (10, 35), (20, 300), 1),
    RelationTopic("Engine Size vs Fuel Economy", "engine size and fuel economy", "Engine size (L)",
                  "Fuel economy (km/L)", (1.0, 5.0), (6, 25), -1),
    RelationTopic("Price vs Demand", "price and demand", "Price ($)", "Units demanded", (1, 50),
                  (10, 500), -1),
    RelationTopic("Age vs Reaction Time", "age and reaction time", "Age (years)", "Reaction time (ms)",
                  (18, 80), (180, 450), 1),
    RelationTopic("Rainfall vs Crop Yield", "rainfall and crop yield", "Rainfall (mm)",
                  "Yield (t/ha)", (200, 1200), (1, 9), 0),
    RelationTopic("Sleep vs Productivity", "sleep and productivity", "Sleep (hours)",
                  "Tasks completed", (4, 10), (2, 30), 0),
)

SERIES_NAMES: tuple[tuple[str, str, str], ...] = (
    ("2022", "2023", "2024"),
    ("Online", "In-store", "Wholesale"),
    ("Product A", "Product B", "Product C"),
    ("Men", "Women", "Children"),
    ("Team Red", "Team Blue", "Team Green"),
    ("Q1", "Q2", "Q3"),
    ("Plan", "Actual", "Forecast"),
)

GROUP_NAMES: tuple[tuple[str, str, str], ...] = (
    ("Group A", "Group B", "Group C"),
    ("Control", "Treatment", "Placebo"),
    ("Urban", "Rural", "Suburban"),
    ("Model X", "Model Y", "Model Z"),
)
